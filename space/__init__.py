"""What is searched: the config schema, the model family, exact parameter counting, the sampled space."""

"""The Bayesian core, torch and Pyro only: distributions and closed-form KLs, priors with
their variational families, layers, the local-reparameterisation handler, the ELBO, the
Bayesian network and its posterior summaries."""

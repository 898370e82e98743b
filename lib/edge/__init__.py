"""The app's edge: what the server accepts from the network before anything reaches the
pipeline (request parameters, uploads, who may connect) and how it answers mistakes."""

"""Models: the Conv-4 encoder, distances, prototypes, hallucinators and the classifier."""

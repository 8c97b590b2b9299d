"""Text embeddings: the model registry and the warm model actors' request merging."""

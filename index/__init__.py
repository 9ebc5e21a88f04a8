"""Corpus encoding, the embedding store, and one FAISS index per embedding width."""

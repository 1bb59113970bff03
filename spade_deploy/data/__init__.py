"""Datasets the project makes itself."""

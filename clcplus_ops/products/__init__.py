"""Delivered products: 100 km tiles of the four layers, their metadata and publishing."""

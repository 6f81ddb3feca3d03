"""Figures: image grids and plots written as PNG files."""

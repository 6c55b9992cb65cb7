"""Using a trained model: embed folders of images, export a standalone model."""

"""The grid runner: measures LeNet's training speed and memory per cell. Renders nothing."""

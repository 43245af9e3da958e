"""What several test modules share: ports, drivers to kill, weight files, tiny jobs, test images, and ../shared."""

"""Container tests: build the images and run them (marker ``container``)."""

"""What the engine needs from the machine: compute devices, memory, files written atomically."""

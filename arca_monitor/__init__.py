"""The arca host monitor: does the kernel's network work for guests, over a control channel."""

"""The traffic layer: routing tables and the routers that apply them."""

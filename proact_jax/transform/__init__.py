"""Any JAX function's ReLUs as clipped activations: a jaxpr interpreter that finds the ReLU sites
(``sites``), evaluates the function with a hook at each site (``interpreter``), and the
``clip_activations`` transform built on it (``clip``)."""

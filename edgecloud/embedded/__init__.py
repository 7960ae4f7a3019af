"""The embedded default: a whole infrastructure on one machine (`edgecloud up`)."""

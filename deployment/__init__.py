"""A real Flower deployment on loopback: certificates, a SuperLink and N SuperNodes."""

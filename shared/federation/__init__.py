"""What the ServerApp and ClientApps share: the run config, the wire protocol, who holds which data."""

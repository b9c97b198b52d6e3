"""vanilladeploy: VanillaNet training checkpoints → verified deployable artifacts."""

__version__ = "0.1.0"

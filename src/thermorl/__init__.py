"""thermorl: RL from verifiable rewards where the language model learns its own sampling temperature."""

__version__ = "0.1.0"

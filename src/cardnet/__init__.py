"""cardnet: tamper-resistant devices on untrusted hosts that hold and move value.

Layers (lower never imports higher): wire -> crypto -> store -> card -> host ->
protocols -> services -> apps. See docs/architecture.md.
"""

__version__ = "0.1.0"

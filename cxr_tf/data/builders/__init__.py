"""TFDS builders of cxr_tf. Importing a builder module registers it with TFDS."""

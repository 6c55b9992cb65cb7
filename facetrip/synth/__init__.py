"""The procedural face generator: identity-labelled synthetic faces, no download needed."""

from facetrip.synth.faces import SynthSummary, render_face, sample_identity, synthesize

__all__ = ["SynthSummary", "render_face", "sample_identity", "synthesize"]

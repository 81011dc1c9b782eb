"""Amodal completion: each instance's full shape, occluded parts included.

completer.py  the shipped weights-free completer (a small CNN on an RGB-D crop) and the baselines
occlusion.py  which instance occludes which, from depth along shared boundaries
taos.py       Target-Aware Occlusion Synthesis (Amodal SAM): occlusions made from visible masks
sca.py        Spatial Completion Adapters in SAM's image encoder (Amodal SAM)
sameo.py      SAM's mask decoder fine-tuned for amodal masks from box prompts (SAMEO)
"""

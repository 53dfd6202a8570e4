"""The network as a control problem: the layer-time grid and its partition, the problem
(opening, residual steps, classifier) and a rank's slice of it, the step kinds, the
normalisation and dropout contexts, and the data sets.

The lowest part: it imports no other part of ocnet.
"""

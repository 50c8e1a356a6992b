"""Auxiliary losses a framework config composes: `framework.auxiliary_losses: {name: options}`, each a registered
`AuxiliaryLoss` (AUXILIARY_LOSSES). The core ships the readout regression; methods add theirs (alg1's world-model
losses: vlablocks/methods/spatial/)."""

"""One module per command family, each a short story over the core: `train` (fsl protonet,
fsl hallucinate), `evaluate`, `sweep` (fsl sweep, fsl sweep-m), `predict`, `register`,
`episodes`; `common` holds what they share. The CLI parses options and calls one of these."""

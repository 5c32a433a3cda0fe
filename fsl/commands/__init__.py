"""One module per command family, each a short story over the core, named `cmd_<command>` so that
no module name is used twice in the repository: `cmd_train` (fsl protonet, fsl hallucinate,
fsl pretrain), `cmd_evaluate`, `cmd_sweep` (fsl sweep, fsl sweep-m), `cmd_predict`,
`cmd_register`, `cmd_episodes`. What they share, by concept: `training_setup` (checks, model,
--init), `options` (RunOptions, Reporter), `inputs` (device, data, models), `records` (tags,
source diff, data-set inputs, the MLflow store) and `run_identity` (run name, params, config
hash, the resume policy). The CLI parses options and calls one of these."""

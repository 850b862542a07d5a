// Each test boots TCG guests (a full CPU each) and some run vism beside them: run them one at a
// time so a 2-core machine is not asked for five emulated CPUs at once.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

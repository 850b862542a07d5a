// Leak tests count the process's open fds (Fd.CountOpen), which tests running in parallel would
// disturb; the whole suite takes a few seconds serially.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

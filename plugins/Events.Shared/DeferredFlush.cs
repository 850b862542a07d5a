using Vism.Abstractions;

namespace Vism.Events.Shared;

/// <summary>
/// Runs a flush once per batch on the device's loop: with a batch delay the first
/// <see cref="Request"/> of a batch schedules it after that delay and later requests before it runs
/// join that batch; with no delay the flush runs inline, inside the request (the update reaches the
/// driver in the loop turn that routed it, with no extra self-Post). <see cref="Cancel"/> forgets a
/// scheduled flush (device reset).
/// Loop thread only.
/// </summary>
internal sealed class DeferredFlush(IDeviceLoop loop, TimeSpan delay, Action flush)
{
    private IDisposable? _timer;
    private int _generation;
    private bool _scheduled;

    /// <summary>Whether a flush is scheduled and has not run yet.</summary>
    public bool IsScheduled => _scheduled;

    /// <summary>Schedules the flush unless one is already scheduled.</summary>
    public void Request()
    {
        if (_scheduled)
            return;
        if (delay <= TimeSpan.Zero)
        {
            flush();
            return;
        }
        _scheduled = true;
        int generation = _generation;
        _timer = loop.Schedule(delay, () => Run(generation));
    }

    /// <summary>Forgets the scheduled flush, if any.</summary>
    public void Cancel()
    {
        _generation++;
        _scheduled = false;
        _timer?.Dispose();
        _timer = null;
    }

    private void Run(int generation)
    {
        if (generation != _generation)
            return;
        _scheduled = false;
        _timer = null;
        flush();
    }
}

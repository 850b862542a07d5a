using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>
/// Detects driver writes into the NOTIFY window, which for vhost-user is plain shared memory (a memfd
/// the backend SHMEM_MAPs into shmid 2), by polling it from a loop timer:
/// <list type="bullet">
/// <item>only slots below <see cref="IVirtioDevice.SlotsInUse"/> are scanned; a slot is read with one
/// aligned load and cleared with an atomic exchange only when non-zero;</item>
/// <item>after a hit, a kick or a new mapping the interval is the fast one, and stays so for the
/// hold time (counted in fast scans); after that each empty scan doubles it up to the slow one. So a
/// device notified every millisecond or more often is polled at the fast interval, latency is
/// bounded by the slow interval, and an idle device costs one short scan per slow interval.
/// Intervals are loop timers, precise to a few microseconds, so a fast interval of tens of
/// microseconds is what it says;</item>
/// <item>polling stops while no slot is in use and restarts on the next kick, start or mapping
/// (a slot only comes into use through a controlq request and a SHMEM_MAP);</item>
/// <item>the device scans once more (<see cref="ITransportServices.FlushNotifyWrites"/>) before it
/// serves each control request, so a notify written before a request (say, a DETACH) is routed
/// before that request is served.</item>
/// </list>
/// Loop thread only.
/// </summary>
internal sealed class NotifyPoller : IDisposable
{
    private readonly IVirtioDevice _device;
    private readonly Mapping _window;
    private readonly ulong _slotSize;
    private readonly int _width;
    private readonly IDeviceLoop _loop;
    private readonly IDeviceCounters _counters;
    private readonly TimeSpan _fast;
    private readonly TimeSpan _slow;
    private readonly int _holdScans;
    private IDisposable? _timer;
    private TimeSpan _interval;
    private TimeSpan _scheduled;
    private int _fastScansLeft;
    private bool _disposed;

    public NotifyPoller(IVirtioDevice device, Mapping window, IDeviceLoop loop, IDeviceCounters counters, NotifyPollPolicy policy)
    {
        _device = device;
        _window = window;
        _slotSize = device.Description.NotifySize;
        _width = SlotWidth(_slotSize);
        _loop = loop;
        _counters = counters;
        _fast = policy.Fast;
        _slow = policy.Slow;
        _holdScans = policy.HoldScans;
        _interval = _fast;
    }

    /// <summary>Whether a scan is scheduled.</summary>
    public bool Armed => _timer is not null;

    /// <summary>Scans performed (diagnostics, tests).</summary>
    public long Scans { get; private set; }

    /// <summary>The interval the next scan is (or would be) scheduled with (tests).</summary>
    public TimeSpan Interval => _interval;

    /// <summary>Something happened that may lead to slot writes: poll fast again.</summary>
    public void Activity()
    {
        if (_disposed) return;
        _interval = _fast;
        _fastScansLeft = _holdScans;
        if (_timer is not null && _scheduled <= _fast) return;
        _timer?.Dispose();
        Arm();
    }

    private void Arm()
    {
        _scheduled = _interval;
        _timer = _loop.Schedule(_interval, Tick);
    }

    /// <summary>Stops polling until the next <see cref="Activity"/>.</summary>
    public void Stop()
    {
        _timer?.Dispose();
        _timer = null;
    }

    /// <summary>Scans the slots in use once and reports every non-zero slot to the device.</summary>
    /// <returns>Slots found written.</returns>
    public int Scan()
    {
        Scans++;
        int hits = ScanSlots(_window.Address, _window.Length, _slotSize, _width, _device.SlotsInUse, _device);
        if (hits > 0) _counters.Increment("vhost-user.notify-writes", hits);
        return hits;
    }

    /// <summary>One pass over <paramref name="slots"/> notify slots of <paramref name="slotSize"/>
    /// bytes at <paramref name="window"/>: each is one aligned load of <paramref name="width"/> bytes
    /// and, only when non-zero, an atomic exchange with 0 and a report to <paramref name="device"/>.</summary>
    /// <returns>Slots found written.</returns>
    internal static int ScanSlots(nint window, ulong windowLength, ulong slotSize, int width, int slots, IVirtioDevice? device)
    {
        int hits = 0;
        for (int i = 0; i < slots; i++)
        {
            ulong offset = (ulong)i * slotSize;
            if (offset > windowLength || (ulong)width > windowLength - offset) break;
            if (TakeSlot(window + (nint)offset, width))
            {
                hits++;
                device?.NotifyWrite(offset);
            }
        }
        return hits;
    }

    private void Tick()
    {
        _timer = null;
        if (_disposed) return;
        if (_device.SlotsInUse == 0) return; // re-armed by the next kick or mapping
        if (Scan() > 0)
        {
            _interval = _fast;
            _fastScansLeft = _holdScans;
        }
        else if (_fastScansLeft > 0)
            _fastScansLeft--;
        else
            _interval = _interval >= _slow / 2 ? _slow : _interval * 2;
        Arm();
    }

    private static unsafe bool TakeSlot(nint address, int width)
    {
        switch (width)
        {
            case 8:
                if (Volatile.Read(ref *(ulong*)address) == 0) return false;
                return Interlocked.Exchange(ref *(ulong*)address, 0) != 0;
            case 4:
                if (Volatile.Read(ref *(uint*)address) == 0) return false;
                return Interlocked.Exchange(ref *(uint*)address, 0) != 0;
            case 2:
                if (Volatile.Read(ref *(ushort*)address) == 0) return false;
                return Interlocked.Exchange(ref *(ushort*)address, 0) != 0;
            default:
                if (Volatile.Read(ref *(byte*)address) == 0) return false;
                return Interlocked.Exchange(ref *(byte*)address, 0) != 0;
        }
    }

    /// <summary>The widest aligned load (1, 2, 4 or 8 bytes) that stays inside one slot.</summary>
    internal static int SlotWidth(ulong slotSize)
    {
        if (slotSize == 0) return 1;
        int w = 8;
        while (w > 1 && slotSize % (ulong)w != 0) w >>= 1;
        return w;
    }

    public void Dispose()
    {
        _disposed = true;
        Stop();
    }
}

/// <summary>The NOTIFY poll intervals: <paramref name="Fast"/> after activity, kept for
/// <paramref name="Hold"/>, then doubling per empty scan up to <paramref name="Slow"/>.</summary>
internal readonly record struct NotifyPollPolicy(TimeSpan Fast, TimeSpan Slow, TimeSpan Hold)
{
    /// <summary>Empty scans at the fast interval after activity before the interval starts to grow.</summary>
    public int HoldScans => Fast <= TimeSpan.Zero ? 0 : (int)Math.Min(int.MaxValue, Hold.Ticks / Fast.Ticks);

    public static NotifyPollPolicy From(VhostUserOptions options) => new(options.NotifyPollFast, options.NotifyPollSlow, options.NotifyPollHold);
}

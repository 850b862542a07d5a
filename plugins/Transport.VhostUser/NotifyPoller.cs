using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>
/// Detects driver writes into the NOTIFY window, which for vhost-user is plain shared memory (a memfd
/// the backend SHMEM_MAPs into shmid 2), by polling it from its loop's <see cref="NotifyScanner"/>
/// (one timer per loop for every device on it, not one per device):
/// <list type="bullet">
/// <item>only slots below <see cref="IVirtioDevice.SlotsInUse"/> are scanned; each whole slot
/// (<c>notify_size</c> bytes) is compared with the poller's snapshot of it, so a write of any value at
/// any byte of the slot that changes it is seen; a changed slot is copied into the snapshot and
/// reported once. The device never writes the window. A store of the value a byte already holds
/// changes nothing in memory and cannot be seen: a driver must change the slot (vism's own frontend
/// adds 1 to the slot's first byte) or, where it can, ring the doorbell (any kick scans at once);</item>
/// <item>after a hit, a kick or a new mapping the interval is the fast one, and stays so for the
/// hold time (counted in fast scans); after that each empty scan doubles it up to the slow one. So a
/// device notified every millisecond or more often is polled at the fast interval, latency is
/// bounded by the slow interval, and an idle device costs one short scan per slow interval, done in
/// the same wake-up as the other idle devices' of its loop (scans are due on a grid of the interval,
/// see <see cref="NotifyScanner"/>, so the next scan comes at most one interval after the last one).
/// The scanner's timer is a loop timer, precise to a few microseconds, so a fast interval of tens
/// of microseconds is what it says;</item>
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
    private readonly ulong _windowSlots;
    private byte[] _snapshot = [];
    private readonly NotifyScanner _scanner;
    private readonly IDeviceCounters _counters;
    private readonly TimeSpan _fast;
    private readonly TimeSpan _slow;
    private readonly int _holdScans;
    private TimeSpan _interval;
    private long _due = long.MaxValue; // when armed: the scan queued with the scanner, clock ticks
    private int _fastScansLeft;
    private bool _disposed;

    public NotifyPoller(IVirtioDevice device, Mapping window, NotifyScanner scanner, IDeviceCounters counters, NotifyPollPolicy policy)
    {
        _device = device;
        _window = window;
        _slotSize = Math.Max(1, device.Description.NotifySize);
        _windowSlots = window.Length / _slotSize;
        _scanner = scanner;
        _counters = counters;
        _fast = policy.Fast;
        _slow = policy.Slow;
        _holdScans = policy.HoldScans;
        _interval = _fast;
        scanner.Add(this);
    }

    /// <summary>Whether the poller is polling at its fast interval (activity within its hold time)
    /// with slots in use: the loop's busy looks scan it.</summary>
    public bool Hot => Armed && _interval == _fast && !_disposed && _device.SlotsInUse > 0;

    /// <summary>Whether a scan is queued with the loop's scanner.</summary>
    public bool Armed { get; private set; }

    /// <summary>Scans performed (diagnostics, tests).</summary>
    public long Scans { get; private set; }

    /// <summary>The interval the next scan is (or would be) scheduled with (tests).</summary>
    public TimeSpan Interval => _interval;

    /// <summary>When the queued scan is due, on the scanner's clock (tests).</summary>
    internal TimeSpan DueAt => TimeSpan.FromTicks(_due);

    /// <summary>Something happened that may lead to slot writes: poll fast again.</summary>
    public void Activity()
    {
        if (_disposed) return;
        _interval = _fast;
        _fastScansLeft = _holdScans;
        long now = _scanner.Now.Ticks;
        if (Armed && _due > now && _due - now <= _fast.Ticks) return; // a scan within the fast interval is queued already
        Arm(now);
    }

    /// <summary>Queues the next scan on the grid of the interval, at most one interval after <paramref name="now"/>.</summary>
    private void Arm(long now)
    {
        _due = NotifyScanner.NextGridPoint(now, _interval);
        Armed = true;
        _scanner.Enqueue(this, _due);
    }

    /// <summary>Stops polling until the next <see cref="Activity"/>.</summary>
    public void Stop()
    {
        if (!Armed) return;
        Armed = false;
        _scanner.Remove(this, _due);
    }

    /// <summary>Forgets the snapshot (every slot taken as all zeroes): the window was cleared for a new start.</summary>
    public void ResetSnapshot() => Array.Clear(_snapshot);

    /// <summary>Scans the slots in use once and reports every slot that changed since the last scan.</summary>
    /// <returns>Slots found written.</returns>
    public int Scan()
    {
        Scans++;
        int slots = _device.SlotsInUse;
        if ((ulong)slots * _slotSize > (ulong)_snapshot.Length)
        {
            // Sized for the slots in use, not the whole window (which may be megabytes): grown as
            // slots come into use. A grown part starts as zeroes, what the window held at the start.
            ulong wanted = Math.Min((ulong)slots, _windowSlots) * _slotSize;
            if (wanted > (ulong)_snapshot.Length)
                Array.Resize(ref _snapshot, checked((int)wanted));
        }
        int hits = ScanSlots(_window.Address, _window.Length, _slotSize, _snapshot, slots, _device);
        if (hits > 0) _counters.Increment("vhost-user.notify-writes", hits);
        return hits;
    }

    /// <summary>A busy look's scan (<see cref="NotifyScanner"/>): a write it finds is activity, so the
    /// window keeps polling fast for its hold time after it, as after a kick. Without that, a driver
    /// that writes without ringing the doorbell would have each write found by a look, the fast timer
    /// would find nothing, and the window would back off (and leave the looks) one hold time after the
    /// last kick however busy it was.</summary>
    /// <returns>Slots found written.</returns>
    internal int Look()
    {
        int hits = Scan();
        if (hits > 0) _fastScansLeft = _holdScans;
        return hits;
    }

    /// <summary>One pass over <paramref name="slots"/> notify slots of <paramref name="slotSize"/>
    /// bytes at <paramref name="window"/>: each is compared with its copy in <paramref name="snapshot"/>
    /// and, only when it differs, copied there and reported to <paramref name="device"/> (with the
    /// slot's offset). Slots beyond the window or the snapshot are not scanned.</summary>
    /// <returns>Slots found written.</returns>
    internal static unsafe int ScanSlots(nint window, ulong windowLength, ulong slotSize, byte[] snapshot, int slots, IVirtioDevice? device)
    {
        int hits = 0;
        int size = (int)Math.Min(slotSize, int.MaxValue);
        for (int i = 0; i < slots; i++)
        {
            ulong offset = (ulong)i * slotSize;
            if (offset > windowLength || slotSize > windowLength - offset || offset + slotSize > (ulong)snapshot.Length) break;
            var live = new ReadOnlySpan<byte>((void*)(window + (nint)offset), size);
            Span<byte> seen = snapshot.AsSpan((int)offset, size);
            bool same = size switch
            {
                1 => live[0] == seen[0],
                8 => Read64(live) == Read64(seen),
                _ => live.SequenceEqual(seen),
            };
            if (same)
                continue;
            live.CopyTo(seen); // a write racing with this copy is either in it or seen at the next scan
            hits++;
            device?.NotifyWrite(offset);
        }
        return hits;
    }

    private static ulong Read64(ReadOnlySpan<byte> eight) => System.Runtime.InteropServices.MemoryMarshal.Read<ulong>(eight);

    /// <summary>The scanner's timer reached a scan this poller queued for <paramref name="due"/> (the
    /// entry is already out of the queue); one it has since replaced by an earlier one is ignored.</summary>
    /// <returns>Whether the scan found writes.</returns>
    internal bool Due(long due, long now)
    {
        if (!Armed || due != _due) return false;
        Armed = false;
        if (_disposed) return false;
        if (_device.SlotsInUse == 0) return false; // re-armed by the next kick or mapping
        bool found = Scan() > 0;
        if (found)
        {
            _interval = _fast;
            _fastScansLeft = _holdScans;
        }
        else if (_fastScansLeft > 0)
            _fastScansLeft--;
        else
            _interval = _interval >= _slow / 2 ? _slow : _interval * 2;
        Arm(now);
        return found;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Stop();
        _scanner.Drop(this);
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

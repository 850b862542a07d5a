using Vism.Abstractions;
using Vism.Driver;

namespace Vism.Conformance;

/// <summary>How a driver receives region update events, by what it negotiated.</summary>
public enum UpdateMode
{
    /// <summary>Neither event feature was negotiated: no events.</summary>
    None,

    /// <summary>VIRTIO_ISM_F_EVENT_VQ: <c>{num, offset[]}</c> records on the eventq.</summary>
    Eventq,

    /// <summary>VIRTIO_ISM_F_EVENT_IRQ: the vector bound to a region with EVENT_VECTOR fires.</summary>
    Vectors,
}

/// <summary>
/// One driver's view of update events, whichever way they come: eventq records (offsets as the
/// device reported them) or per-region vectors (a vector firing means "one of the regions bound to it
/// was updated"). Checks call <see cref="Watch"/> for each region before a peer notifies it.
/// </summary>
public sealed class Updates
{
    private readonly CheckContext _context;
    private readonly Peer _peer;
    private readonly Dictionary<ulong, int> _vectorOf = [];
    private readonly List<ulong> _received = [];

    internal Updates(CheckContext context, Peer peer)
    {
        _context = context;
        _peer = peer;
        VirtioDriver driver = peer.Client.Driver;
        Mode = driver.Has(Features.IsmEventVq) ? UpdateMode.Eventq
            : driver.Has(Features.IsmEventIrq) ? UpdateMode.Vectors
            : UpdateMode.None;
    }

    /// <summary>How this driver receives events.</summary>
    public UpdateMode Mode { get; }

    /// <summary>Prepares to receive updates of the region at <paramref name="offset"/>: with vectors,
    /// binds it with EVENT_VECTOR (expecting OK) to a vector of its own where there are enough.</summary>
    /// <param name="offset">The region's offset in this driver's window.</param>
    public void Watch(ulong offset)
    {
        if (Mode != UpdateMode.Vectors || _vectorOf.ContainsKey(offset))
            return;
        int vectors = _peer.Client.Transport.VectorCount;
        if (vectors == 0)
            _context.Fail($"device {_peer.Name} negotiated VIRTIO_ISM_F_EVENT_IRQ but its transport offers the driver no vectors");
        int vector = _vectorOf.Count % vectors;
        byte ack = _peer.Client.EventVector(offset, (ulong)vector);
        _context.Expect(ack == IsmControl.AckOk,
            $"device {_peer.Name}: EVENT_VECTOR binding 0x{offset:x} to vector {vector} answered ack {ack}, expected OK ({_peer.Errors()})");
        _vectorOf[offset] = vector;
    }

    /// <summary>Waits for an update of the region at <paramref name="offset"/> (one this driver
    /// <see cref="Watch"/>es); fails the check when none arrives within the event timeout.</summary>
    /// <param name="offset">The region's offset in this driver's window.</param>
    /// <param name="why">What caused the update, for the reason.</param>
    public void Expect(ulong offset, string why)
    {
        if (!WaitFor(offset, _context.Options.EventTimeout))
            _context.Fail($"device {_peer.Name} got no update event for its region at 0x{offset:x} within {_context.Options.EventTimeout.TotalSeconds:0.#} s after {why} ({Mode})");
    }

    /// <summary>Waits up to <paramref name="timeout"/> for an update of the region at <paramref name="offset"/>.</summary>
    /// <param name="offset">The region's offset.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>Whether one arrived.</returns>
    public bool WaitFor(ulong offset, TimeSpan timeout)
    {
        switch (Mode)
        {
            case UpdateMode.Eventq:
                long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
                while (true)
                {
                    if (_received.Remove(offset))
                        return true;
                    long left = deadline - Environment.TickCount64;
                    if (left <= 0)
                        return false;
                    IReadOnlyList<ulong>? got = _peer.Client.WaitEvent(TimeSpan.FromMilliseconds(left));
                    if (got is not null)
                        _received.AddRange(got);
                }
            case UpdateMode.Vectors:
                if (!_vectorOf.TryGetValue(offset, out int vector))
                    throw new InvalidOperationException($"the region at 0x{offset:x} is not watched");
                return _peer.Client.WaitVector(vector, timeout);
            default:
                return false;
        }
    }

    /// <summary>Collects what arrives within the quiet window: eventq offsets, or for vectors the
    /// regions bound to each vector that fired. Used to show that no event came.</summary>
    /// <returns>The offsets reported (empty when nothing came).</returns>
    public IReadOnlyList<ulong> Quiet()
    {
        TimeSpan window = _context.Options.QuietWindow;
        var seen = new List<ulong>();
        long deadline = Environment.TickCount64 + (long)window.TotalMilliseconds;
        switch (Mode)
        {
            case UpdateMode.Eventq:
                seen.AddRange(_received);
                _received.Clear();
                for (long left = window.Ticks; left > 0; left = (deadline - Environment.TickCount64) * TimeSpan.TicksPerMillisecond)
                {
                    IReadOnlyList<ulong>? got = _peer.Client.WaitEvent(TimeSpan.FromTicks(left));
                    if (got is null) break;
                    seen.AddRange(got);
                }
                break;
            case UpdateMode.Vectors:
                int vectors = _peer.Client.Transport.VectorCount;
                var fired = new HashSet<int>();
                while (Environment.TickCount64 < deadline)
                    for (int v = 0; v < vectors; v++)
                        if (_peer.Client.WaitVector(v, TimeSpan.FromMilliseconds(10)))
                            fired.Add(v);
                foreach (int v in fired)
                {
                    ulong[] bound = [.. _vectorOf.Where(kv => kv.Value == v).Select(kv => kv.Key)];
                    seen.AddRange(bound.Length > 0 ? bound : [ulong.MaxValue]);
                }
                break;
        }
        return seen;
    }

    /// <summary>Fails the check when any update arrives within the quiet window.</summary>
    /// <param name="why">Why none may come, for the reason.</param>
    public void ExpectNone(string why)
    {
        IReadOnlyList<ulong> seen = Quiet();
        if (seen.Count > 0)
            _context.Fail($"device {_peer.Name} got update events for {string.Join(", ", seen.Select(o => o == ulong.MaxValue ? "(an unbound vector)" : $"0x{o:x}"))}, expected none: {why}");
    }

    /// <summary>Forgets a detached region: its vector binding (the device dropped it) and events
    /// received for it but not yet expected.</summary>
    /// <param name="offset">The region's offset.</param>
    public void Forget(ulong offset)
    {
        _vectorOf.Remove(offset);
        _received.RemoveAll(o => o == offset);
    }
}

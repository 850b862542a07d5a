using Vism.Abstractions;

namespace Vism.Driver;

/// <summary>A guest buffer as a driver hands it to the device.</summary>
/// <param name="Address">Guest-physical address (inside <see cref="GuestRam"/>).</param>
/// <param name="Length">Length in bytes.</param>
public readonly record struct DriverBuffer(ulong Address, uint Length);

/// <summary>One used-ring entry: the chain's head and the bytes the device wrote.</summary>
/// <param name="Head">The head descriptor index that <see cref="DriverQueue.Add"/> returned.</param>
/// <param name="Written">Bytes the device wrote into the chain's device-writable part.</param>
public readonly record struct UsedElement(ushort Head, uint Written);

/// <summary>
/// The driver side of one split virtqueue, as Linux's virtio_ring builds it: rings allocated in
/// <see cref="GuestRam"/>, chains of driver-readable then device-writable buffers (optionally through
/// an indirect table), the available index published with release ordering, used entries read with
/// acquire ordering, and VIRTIO_F_EVENT_IDX in both directions (used_event written, avail_event read).
/// Reusable by any device author to drive a device from a test. Not thread-safe: one user at a time.
/// The <c>Raw*</c> members write arbitrary (even malformed) ring contents for hostile-ring tests.
/// </summary>
public sealed class DriverQueue
{
    /// <summary>VIRTQ_DESC_F_NEXT.</summary>
    public const ushort DescNext = 1;

    /// <summary>VIRTQ_DESC_F_WRITE.</summary>
    public const ushort DescWrite = 2;

    /// <summary>VIRTQ_DESC_F_INDIRECT.</summary>
    public const ushort DescIndirect = 4;

    private readonly GuestRam _ram;
    private readonly Stack<ushort> _free;
    private readonly ushort[] _chainLength; // descriptors a head occupies in the main table; 0 = free
    private readonly ushort[] _next;
    private readonly ulong _indirectTables;
    private ushort _availIdx;
    private ushort _added;
    private ushort _lastUsed;
    private bool _polling;

    /// <summary>Allocates the rings (and, with <paramref name="maxIndirect"/> &gt; 0, one indirect
    /// table per descriptor) in <paramref name="ram"/>.</summary>
    /// <param name="ram">Driver memory.</param>
    /// <param name="index">Queue index.</param>
    /// <param name="size">Queue size (a power of two).</param>
    /// <param name="eventIdx">Whether VIRTIO_F_EVENT_IDX was negotiated.</param>
    /// <param name="maxIndirect">Largest indirect table (0 when VIRTIO_F_INDIRECT_DESC is not used).</param>
    public DriverQueue(GuestRam ram, int index, ushort size, bool eventIdx, int maxIndirect = 0)
    {
        ArgumentNullException.ThrowIfNull(ram);
        if (size == 0 || (size & (size - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(size), $"queue size {size} is not a power of two");
        ArgumentOutOfRangeException.ThrowIfNegative(maxIndirect);
        _ram = ram;
        Index = index;
        Size = size;
        EventIdx = eventIdx;
        MaxIndirect = maxIndirect;
        ulong desc = ram.Allocate(16UL * size, 16);
        ulong avail = ram.Allocate(6 + 2UL * size, 2);
        ulong used = ram.Allocate(6 + 8UL * size, 4);
        ram.Span(desc, 16 * size).Clear();
        ram.Span(avail, 6 + 2 * size).Clear();
        ram.Span(used, 6 + 8 * size).Clear();
        Settings = new QueueSettings(size, desc, avail, used);
        if (maxIndirect > 0)
            _indirectTables = ram.Allocate(16UL * (ulong)maxIndirect * size, 16);
        _free = new Stack<ushort>(size);
        for (int i = size - 1; i >= 0; i--)
            _free.Push((ushort)i);
        _chainLength = new ushort[size];
        _next = new ushort[size];
    }

    /// <summary>Queue index.</summary>
    public int Index { get; }

    /// <summary>Number of descriptors.</summary>
    public ushort Size { get; }

    /// <summary>Whether VIRTIO_F_EVENT_IDX is in use.</summary>
    public bool EventIdx { get; }

    /// <summary>Largest indirect table; 0 when indirect descriptors are not used.</summary>
    public int MaxIndirect { get; }

    /// <summary>The ring layout to hand to the device.</summary>
    public QueueSettings Settings { get; }

    /// <summary>Free descriptors in the main table.</summary>
    public int FreeDescriptors => _free.Count;

    /// <summary>Chains added and not yet returned by the device.</summary>
    public int Outstanding { get; private set; }

    /// <summary>The available index the driver published last.</summary>
    public ushort AvailIndex => _availIdx;

    /// <summary>
    /// Adds a chain of <paramref name="readable"/> then <paramref name="writable"/> buffers and
    /// publishes it. With <paramref name="indirect"/> the buffers go into an indirect table and the
    /// chain takes one descriptor of the main table.
    /// </summary>
    /// <param name="readable">Driver-readable buffers.</param>
    /// <param name="writable">Device-writable buffers.</param>
    /// <param name="indirect">Use an indirect table.</param>
    /// <returns>The head index (it comes back in <see cref="UsedElement.Head"/>).</returns>
    /// <exception cref="InvalidOperationException">When the ring has no room.</exception>
    public ushort Add(ReadOnlySpan<DriverBuffer> readable, ReadOnlySpan<DriverBuffer> writable, bool indirect = false)
    {
        int n = readable.Length + writable.Length;
        if (n == 0)
            throw new ArgumentException("a chain needs at least one buffer");
        ushort head;
        if (indirect)
        {
            if (n > MaxIndirect)
                throw new InvalidOperationException($"{n} buffers do not fit an indirect table of {MaxIndirect}");
            if (_free.Count == 0)
                throw new InvalidOperationException($"queue {Index} is full");
            head = _free.Pop();
            ulong table = IndirectTable(head);
            for (int i = 0; i < n; i++)
            {
                DriverBuffer b = i < readable.Length ? readable[i] : writable[i - readable.Length];
                ushort flags = (ushort)((i < readable.Length ? 0 : DescWrite) | (i + 1 < n ? DescNext : 0));
                WriteDescriptor(table, i, b.Address, b.Length, flags, (ushort)(i + 1 < n ? i + 1 : 0));
            }
            WriteDescriptor(Settings.DescriptorTable, head, table, (uint)(16 * n), DescIndirect, 0);
            _chainLength[head] = 1;
        }
        else
        {
            if (n > _free.Count)
                throw new InvalidOperationException($"queue {Index} has {_free.Count} free descriptors, {n} needed");
            Span<ushort> ids = n <= 64 ? stackalloc ushort[n] : new ushort[n];
            for (int i = 0; i < n; i++)
                ids[i] = _free.Pop();
            for (int i = 0; i < n; i++)
            {
                DriverBuffer b = i < readable.Length ? readable[i] : writable[i - readable.Length];
                bool more = i + 1 < n;
                ushort flags = (ushort)((i < readable.Length ? 0 : DescWrite) | (more ? DescNext : 0));
                ushort next = more ? ids[i + 1] : (ushort)0;
                WriteDescriptor(Settings.DescriptorTable, ids[i], b.Address, b.Length, flags, next);
                _next[ids[i]] = next;
            }
            head = ids[0];
            _chainLength[head] = (ushort)n;
        }
        Outstanding++;
        RawPublish(head);
        return head;
    }

    /// <summary>Whether the device wants a kick for the chains published since the last call
    /// (avail_event with EVENT_IDX, otherwise VRING_USED_F_NO_NOTIFY). Resets the count.</summary>
    /// <returns>True when the driver should kick.</returns>
    public bool ShouldKick()
    {
        Interlocked.MemoryBarrier(); // the published index before the device's suppression state
        ushort now = _availIdx;
        ushort old = (ushort)(now - _added);
        _added = 0;
        if (EventIdx)
        {
            ushort availEvent = ReadUInt16(Settings.UsedRing + 4 + 8UL * Size);
            return (ushort)(now - availEvent - 1) < (ushort)(now - old);
        }
        return (ReadUInt16(Settings.UsedRing) & 1) == 0;
    }

    /// <summary>Takes the next used entry, frees its descriptors and (with EVENT_IDX) asks for an
    /// interrupt at the next one.</summary>
    /// <param name="used">The entry.</param>
    /// <returns>False when the device has returned nothing new.</returns>
    /// <exception cref="DriverTransportException">When the device returned an id it was not given.</exception>
    public bool TryTakeUsed(out UsedElement used)
    {
        used = default;
        ushort usedIdx = ReadUInt16(Settings.UsedRing + 2); // acquire
        if (usedIdx == _lastUsed)
            return false;
        ulong elem = Settings.UsedRing + 4 + 8UL * (ushort)(_lastUsed % Size);
        if (!_ram.TryReadUInt32(elem, out uint id) || !_ram.TryReadUInt32(elem + 4, out uint written))
            throw new DriverTransportException("the used ring is outside guest RAM");
        if (id >= Size || _chainLength[id] == 0)
            throw new DriverTransportException($"queue {Index}: the device returned descriptor {id}, which is not an outstanding head");
        ushort head = (ushort)id;
        int count = _chainLength[head];
        _chainLength[head] = 0;
        ushort d = head;
        for (int i = 0; i < count; i++)
        {
            _free.Push(d);
            d = _next[d];
        }
        Outstanding--;
        _lastUsed++;
        if (EventIdx)
            WriteInterruptRequest();
        used = new UsedElement(head, written);
        return true;
    }

    /// <summary>Whether the driver is polling the used ring (<see cref="SetPolling"/>).</summary>
    public bool Polling => Volatile.Read(ref _polling);

    /// <summary>While the driver polls the used ring it asks the device for no interrupts (as Linux's
    /// virtqueue_disable_cb / NAPI): with EVENT_IDX used_event is kept half the index space ahead,
    /// otherwise VRING_AVAIL_F_NO_INTERRUPT is set. Turning polling off asks for an interrupt at the
    /// next used entry again and orders that request before the caller's next look at the used ring,
    /// which the caller must take (an entry published meanwhile raised no interrupt).</summary>
    /// <param name="polling">True while polling.</param>
    public void SetPolling(bool polling)
    {
        _polling = polling;
        WriteInterruptRequest();
        Interlocked.MemoryBarrier(); // the request before the used index is read again
    }

    private void WriteInterruptRequest()
    {
        if (EventIdx)
            RawSetUsedEvent(_polling ? (ushort)(_lastUsed + 0x7fff) : _lastUsed);
        else
            SuppressInterrupts(_polling);
    }

    /// <summary>Sets or clears VRING_AVAIL_F_NO_INTERRUPT (ignored by the device under EVENT_IDX).</summary>
    /// <param name="suppress">True to ask for no interrupts.</param>
    public void SuppressInterrupts(bool suppress) =>
        _ram.TryWriteUInt16(Settings.AvailRing, (ushort)(suppress ? 1 : 0));

    /// <summary>Sets used_event directly (EVENT_IDX): the device interrupts when the used index passes it.</summary>
    /// <param name="value">The used index after which to interrupt.</param>
    public void RawSetUsedEvent(ushort value) => _ram.TryWriteUInt16(Settings.AvailRing + 4 + 2UL * Size, value);

    /// <summary>Writes one descriptor of the main table as given (hostile-ring tests).</summary>
    /// <param name="index">Descriptor index.</param>
    /// <param name="address">Buffer address.</param>
    /// <param name="length">Buffer length.</param>
    /// <param name="flags">NEXT / WRITE / INDIRECT bits.</param>
    /// <param name="next">Next index.</param>
    public void RawDescriptor(int index, ulong address, uint length, ushort flags, ushort next)
    {
        if ((uint)index >= Size)
            throw new ArgumentOutOfRangeException(nameof(index));
        WriteDescriptor(Settings.DescriptorTable, index, address, length, flags, next);
    }

    /// <summary>Writes one descriptor into a table anywhere in guest RAM (hostile-ring tests).</summary>
    /// <param name="table">Guest address of the table.</param>
    /// <param name="index">Descriptor index.</param>
    /// <param name="address">Buffer address.</param>
    /// <param name="length">Buffer length.</param>
    /// <param name="flags">NEXT / WRITE / INDIRECT bits.</param>
    /// <param name="next">Next index.</param>
    public void RawDescriptorAt(ulong table, int index, ulong address, uint length, ushort flags, ushort next) =>
        WriteDescriptor(table, index, address, length, flags, next);

    /// <summary>Puts <paramref name="head"/> in the next available slot and publishes the index
    /// (release ordering). No bookkeeping: the device may return it or fault.</summary>
    /// <param name="head">Any value, valid or not.</param>
    public void RawPublish(ushort head)
    {
        _ram.TryWriteUInt16(Settings.AvailRing + 4 + 2UL * (ushort)(_availIdx % Size), head);
        _availIdx++;
        _added++;
        _ram.TryWriteUInt16(Settings.AvailRing + 2, _availIdx); // release store
    }

    /// <summary>Publishes an arbitrary available index (hostile-ring tests).</summary>
    /// <param name="index">The index.</param>
    public void RawSetAvailIndex(ushort index)
    {
        _availIdx = index;
        _ram.TryWriteUInt16(Settings.AvailRing + 2, index);
    }

    /// <summary>Reads the device's used index.</summary>
    public ushort UsedIndex => ReadUInt16(Settings.UsedRing + 2);

    /// <summary>Reads avail_event, which the device writes under EVENT_IDX.</summary>
    public ushort AvailEvent => ReadUInt16(Settings.UsedRing + 4 + 8UL * Size);

    private ulong IndirectTable(ushort head) => _indirectTables + 16UL * (ulong)MaxIndirect * head;

    private void WriteDescriptor(ulong table, int index, ulong address, uint length, ushort flags, ushort next)
    {
        ulong at = table + 16UL * (ulong)index;
        if (!_ram.TryWriteUInt64(at, address) || !_ram.TryWriteUInt32(at + 8, length) ||
            !_ram.TryWriteUInt16(at + 12, flags) || !_ram.TryWriteUInt16(at + 14, next))
            throw new ArgumentOutOfRangeException(nameof(table), $"descriptor {index} of table 0x{table:x} is outside guest RAM");
    }

    private ushort ReadUInt16(ulong address)
    {
        if (!_ram.TryReadUInt16(address, out ushort value))
            throw new DriverTransportException($"0x{address:x} is outside guest RAM");
        return value;
    }
}

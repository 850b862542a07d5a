using System.Buffers.Binary;
using Vism.Abstractions;

namespace Vism.Core.Virtqueues;

/// <summary>What <see cref="SplitQueue.TryPop"/> found.</summary>
public enum PopResult
{
    /// <summary>A chain was popped.</summary>
    Chain,

    /// <summary>The driver has made nothing new available.</summary>
    Empty,

    /// <summary>The ring is malformed; the device must be marked DEVICE_NEEDS_RESET.</summary>
    Fault,
}

/// <summary>
/// The device side of one split virtqueue (virtio 1.x section 2.7): ring addresses and indices
/// only. Guest memory is passed into every call and every access goes through
/// <see cref="IGuestMemory.TryTranslate(ulong, ulong, out nint, out bool)"/>, so the queue survives memory-map changes and never
/// forms a pointer outside guest memory. Not thread-safe: used on the device's loop.
/// </summary>
/// <remarks>
/// The chain walker follows at most one level of indirect tables, gives up after as many
/// descriptors as the table it walks holds (a loop), requires device-writable descriptors to follow
/// every driver-readable one, and rejects chains whose total length does not fit in 32 bits.
/// A chain holds at most <see cref="Size"/> buffer descriptors (virtio 1.2 section 2.7.5.3.1: "A
/// driver MUST NOT create a descriptor chain longer than the Queue Size of the device"): an
/// indirect table with more entries than the chain has left is refused from its length alone,
/// before any entry is read, so a hostile chain costs one descriptor read, not 32,768
/// (<c>ring.chain-over-queue-size</c>). The pointer to an indirect table does not count.
/// Every fault is reported with a short reason (a counter suffix such as <c>ring.loop</c>).
/// </remarks>
public sealed class SplitQueue
{
    /// <summary>VIRTQ_DESC_F_NEXT.</summary>
    public const ushort DescNext = 1;

    /// <summary>VIRTQ_DESC_F_WRITE.</summary>
    public const ushort DescWrite = 2;

    /// <summary>VIRTQ_DESC_F_INDIRECT.</summary>
    public const ushort DescIndirect = 4;

    /// <summary>VIRTQ_AVAIL_F_NO_INTERRUPT.</summary>
    public const ushort AvailNoInterrupt = 1;

    /// <summary>Size of one descriptor in bytes.</summary>
    public const int DescriptorSize = 16;

    private QueueSettings _settings;

    /// <summary>Creates an unconfigured queue.</summary>
    /// <param name="index">The queue index.</param>
    public SplitQueue(int index) => Index = index;

    /// <summary>The queue index.</summary>
    public int Index { get; }

    /// <summary>Whether <see cref="Configure"/> succeeded since the last <see cref="Reset"/>.</summary>
    public bool IsConfigured { get; private set; }

    /// <summary>The ring layout in use.</summary>
    public QueueSettings Settings => _settings;

    /// <summary>Number of descriptors.</summary>
    public ushort Size => _settings.Size;

    /// <summary>Index of the next available-ring entry the device reads (free-running, wraps at 2^16).</summary>
    public ushort NextAvail { get; private set; }

    /// <summary>Index of the next used-ring entry the device writes (free-running).</summary>
    public ushort NextUsed { get; private set; }

    /// <summary>Descriptors read by every walk so far, valid or not (the device's budget per loop turn
    /// counts them). One walk reads at most <see cref="Size"/> buffer descriptors plus the pointer to
    /// an indirect table.</summary>
    public long DescriptorsWalked { get; private set; }

    /// <summary>Whether VIRTIO_F_EVENT_IDX was negotiated.</summary>
    public bool EventIdx { get; private set; }

    /// <summary>Whether VIRTIO_F_INDIRECT_DESC was negotiated.</summary>
    public bool IndirectDesc { get; private set; }

    /// <summary>Checks a ring layout: size a power of two in 1..<paramref name="maxSize"/>, alignment
    /// (16/2/4), and that each ring lies wholly in guest memory (<see cref="TransportRules.CheckRingLayout"/>).</summary>
    /// <param name="settings">The layout.</param>
    /// <param name="maxSize">The device's maximum queue size.</param>
    /// <param name="memory">Guest memory.</param>
    /// <returns>Null when valid, otherwise why not.</returns>
    public static string? Validate(in QueueSettings settings, ushort maxSize, IGuestMemory memory)
    {
        ushort size = settings.Size;
        if (size == 0 || size > maxSize || (size & (size - 1)) != 0)
            return $"queue size {size} is not a power of two in 1..{maxSize}";
        return TransportRules.CheckRingLayout(settings.DescriptorTable, settings.AvailRing, settings.UsedRing, size, memory);
    }

    /// <summary>Adopts a validated layout and the negotiated ring features.</summary>
    /// <param name="settings">The layout (validate it first).</param>
    /// <param name="eventIdx">VIRTIO_F_EVENT_IDX negotiated.</param>
    /// <param name="indirectDesc">VIRTIO_F_INDIRECT_DESC negotiated.</param>
    public void Configure(in QueueSettings settings, bool eventIdx, bool indirectDesc)
    {
        _settings = settings;
        NextAvail = settings.NextAvail;
        NextUsed = settings.NextAvail;
        EventIdx = eventIdx;
        IndirectDesc = indirectDesc;
        IsConfigured = true;
    }

    /// <summary>Applies the ring features negotiated at DRIVER_OK (a transport may start queues earlier).</summary>
    /// <param name="eventIdx">VIRTIO_F_EVENT_IDX negotiated.</param>
    /// <param name="indirectDesc">VIRTIO_F_INDIRECT_DESC negotiated.</param>
    public void SetFeatures(bool eventIdx, bool indirectDesc)
    {
        EventIdx = eventIdx;
        IndirectDesc = indirectDesc;
    }

    /// <summary>Forgets the layout and indices.</summary>
    public void Reset()
    {
        _settings = default;
        NextAvail = 0;
        NextUsed = 0;
        IsConfigured = false;
    }

    private ulong AvailIdxAddress => _settings.AvailRing + 2;
    private ulong UsedEventAddress => _settings.AvailRing + 4 + 2UL * _settings.Size;
    private ulong UsedIdxAddress => _settings.UsedRing + 2;
    private ulong AvailEventAddress => _settings.UsedRing + 4 + 8UL * _settings.Size;

    /// <summary>Pops the next available chain. With EVENT_IDX, an empty ring publishes
    /// <c>avail_event</c> (asking for the next kick) and looks once more.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="chain">The chain, on <see cref="PopResult.Chain"/>.</param>
    /// <param name="fault">The reason, on <see cref="PopResult.Fault"/>.</param>
    /// <returns>What was found.</returns>
    public PopResult TryPop(IGuestMemory memory, out DescriptorChain? chain, out string? fault)
    {
        chain = null;
        fault = null;
        if (!IsConfigured)
            return PopResult.Empty;
        if (!memory.TryReadUInt16(AvailIdxAddress, out ushort availIdx))
            return Fail("ring.avail-unmapped", out fault);
        if (availIdx == NextAvail && EventIdx)
        {
            if (!memory.TryWriteUInt16(AvailEventAddress, NextAvail))
                return Fail("ring.used-unmapped", out fault);
            Interlocked.MemoryBarrier();
            if (!memory.TryReadUInt16(AvailIdxAddress, out availIdx))
                return Fail("ring.avail-unmapped", out fault);
        }
        if (availIdx == NextAvail)
            return PopResult.Empty;
        if ((ushort)(availIdx - NextAvail) > Size)
            return Fail("ring.avail-index-jump", out fault);

        ulong slot = _settings.AvailRing + 4 + 2UL * (ushort)(NextAvail % Size);
        if (!memory.TryReadUInt16(slot, out ushort head))
            return Fail("ring.avail-unmapped", out fault);
        if (head >= Size)
            return Fail("ring.head-out-of-range", out fault);
        fault = Walk(memory, head, out chain);
        if (fault is not null)
            return PopResult.Fault;
        NextAvail++;
        return PopResult.Chain;
    }

    private static PopResult Fail(string reason, out string? fault)
    {
        fault = reason;
        return PopResult.Fault;
    }

    private string? Walk(IGuestMemory memory, ushort head, out DescriptorChain? chain)
    {
        chain = null;
        var readable = new List<GuestBuffer>(2);
        var writable = new List<GuestBuffer>(2);
        ulong total = 0;
        bool sawWritable = false;

        ulong table = _settings.DescriptorTable;
        uint tableSize = Size;
        bool inIndirect = false;
        uint index = head;
        uint ttl = tableSize;
        uint room = Size; // buffer descriptors the chain may still hold
        Span<byte> raw = stackalloc byte[DescriptorSize];
        while (true)
        {
            if (ttl-- == 0)
                return "ring.loop";
            DescriptorsWalked++;
            if (!memory.TryRead(table + (ulong)index * DescriptorSize, raw))
                return "ring.descriptor-unmapped";
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(raw);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(raw[8..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(raw[12..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(raw[14..]);

            if ((flags & DescIndirect) != 0)
            {
                if (!IndirectDesc) return "ring.indirect-not-negotiated";
                if (inIndirect) return "ring.indirect-in-indirect";
                if ((flags & DescNext) != 0) return "ring.indirect-with-next";
                if (len == 0 || len % DescriptorSize != 0)
                    return "ring.indirect-bad-size";
                // Refused from the table's length alone: none of its entries is read.
                if (len / DescriptorSize > room)
                    return "ring.chain-over-queue-size";
                if (!memory.TryTranslate(addr, len, out _))
                    return "ring.indirect-unmapped";
                inIndirect = true;
                table = addr;
                tableSize = len / DescriptorSize;
                ttl = tableSize;
                index = 0;
                continue;
            }

            // Cannot run out: a direct chain longer than the queue loops (ttl), and an indirect
            // table was checked against the room left when it was entered.
            room--;
            bool isWrite = (flags & DescWrite) != 0;
            if (!isWrite && sawWritable)
                return "ring.read-after-write";
            if (!memory.TryTranslate(addr, len, out _))
                return "ring.buffer-unmapped";
            total += len;
            if (total > uint.MaxValue)
                return "ring.chain-too-long";
            if (len != 0)
            {
                if (isWrite)
                {
                    sawWritable = true;
                    writable.Add(new GuestBuffer(addr, len));
                }
                else
                {
                    readable.Add(new GuestBuffer(addr, len));
                }
            }
            if ((flags & DescNext) == 0)
                break;
            if (next >= tableSize)
                return "ring.next-out-of-range";
            index = next;
        }
        chain = new DescriptorChain(head, [.. readable], [.. writable]);
        return null;
    }

    /// <summary>Puts <paramref name="head"/> into the used ring with <paramref name="written"/>
    /// bytes and publishes the new used index (release ordering), then decides whether the driver
    /// wants an interrupt (used_event with EVENT_IDX, otherwise VRING_AVAIL_F_NO_INTERRUPT).</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="head">The chain's head index.</param>
    /// <param name="written">Bytes written into the chain.</param>
    /// <param name="interrupt">Whether the driver should be interrupted.</param>
    /// <param name="fault">The reason when it returns false.</param>
    /// <returns>False when the used ring is not mapped.</returns>
    public bool TryAddUsed(IGuestMemory memory, ushort head, uint written, out bool interrupt, out string? fault)
    {
        interrupt = false;
        fault = null;
        if (!IsConfigured)
        {
            fault = "ring.not-configured";
            return false;
        }
        ulong elem = _settings.UsedRing + 4 + 8UL * (ushort)(NextUsed % Size);
        if (!memory.TryWriteUInt32(elem, head) || !memory.TryWriteUInt32(elem + 4, written))
        {
            fault = "ring.used-unmapped";
            return false;
        }
        ushort old = NextUsed;
        ushort now = (ushort)(old + 1);
        // TryWriteUInt16 is a release store: the element is visible before the index.
        if (!memory.TryWriteUInt16(UsedIdxAddress, now))
        {
            fault = "ring.used-unmapped";
            return false;
        }
        NextUsed = now;
        // The index store must be visible before we read the driver's suppression state.
        Interlocked.MemoryBarrier();
        if (EventIdx)
        {
            if (!memory.TryReadUInt16(UsedEventAddress, out ushort usedEvent))
            {
                fault = "ring.avail-unmapped";
                return false;
            }
            interrupt = NeedEvent(usedEvent, now, old);
        }
        else
        {
            if (!memory.TryReadUInt16(_settings.AvailRing, out ushort flags))
            {
                fault = "ring.avail-unmapped";
                return false;
            }
            interrupt = (flags & AvailNoInterrupt) == 0;
        }
        return true;
    }

    /// <summary>vring_need_event: whether <paramref name="eventIdx"/> lies in (old, new].</summary>
    /// <param name="eventIdx">The other side's event index.</param>
    /// <param name="newIdx">The index after the update.</param>
    /// <param name="oldIdx">The index before the update.</param>
    /// <returns>Whether the other side asked to be told.</returns>
    public static bool NeedEvent(ushort eventIdx, ushort newIdx, ushort oldIdx) =>
        (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - oldIdx);
}

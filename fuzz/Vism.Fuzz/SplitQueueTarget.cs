using System.Buffers.Binary;
using Vism.Abstractions;
using Vism.Core.Virtqueues;
using Vism.Driver;

namespace Vism.Fuzz;

/// <summary>
/// The split-queue descriptor walker: Core's <see cref="SplitQueue"/> over guest memory whose
/// bytes (rings, descriptor tables, indirect tables) are the input. Guest memory is two 32 KiB
/// regions with a hole between them: <c>[0, 0x8000)</c> and <c>[0xc000, 0x14000)</c> (one memfd).
/// Input: <c>u8 sizeLog2, u8 features, u16 nextAvail, u16 ringOffset, memory...</c>; the
/// descriptor table sits at <c>ringOffset &amp; ~15</c>, the rings follow it. Rules: the walker never throws or loops, every
/// buffer of a chain lies wholly in guest memory, lengths add up without overflow, a fault always
/// has a reason, the chain's Read/Write move exactly what fits, and one pop reads at most the queue
/// size of descriptors plus an indirect table's pointer (a longer chain is refused unread).
/// </summary>
internal sealed class SplitQueueTarget : IFuzzTarget
{
    private const ulong Half = 0x8000;
    private const ulong SecondBase = 0xc000;
    private const ushort MaxQueue = 1024;

    private readonly GuestRam _ram = new(2 * Half, guestBase: 0);
    private readonly HoleyMemory _memory;
    private readonly byte[] _scratch = new byte[64 * 1024];

    public SplitQueueTarget() => _memory = new HoleyMemory(_ram);

    public void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 6) return;
        var size = (ushort)(1 << (input[0] % 11));
        bool eventIdx = (input[1] & 1) != 0, indirect = (input[1] & 2) != 0;
        ushort nextAvail = BinaryPrimitives.ReadUInt16LittleEndian(input[2..]);
        ulong table = BinaryPrimitives.ReadUInt16LittleEndian(input[4..]) & ~15UL;
        ReadOnlySpan<byte> bytes = input[6..];
        Span<byte> all = _ram.Span(0, (int)(2 * Half));
        all.Clear();
        bytes[..Math.Min(bytes.Length, all.Length)].CopyTo(all);

        ulong avail = table + 16UL * size;
        ulong used = (avail + 6 + 2UL * size + 3) & ~3UL;
        var settings = new QueueSettings(size, table, avail, used, nextAvail);
        if (SplitQueue.Validate(settings, MaxQueue, _memory) is not null) return;
        var queue = new SplitQueue(0);
        queue.Configure(settings, eventIdx, indirect);
        for (int i = 0; i <= 2 * size + 1; i++)
        {
            long walked = queue.DescriptorsWalked;
            PopResult result = queue.TryPop(_memory, out DescriptorChain? chain, out string? fault);
            if (queue.DescriptorsWalked - walked > size + 1)
                throw new FuzzFinding($"one pop read {queue.DescriptorsWalked - walked} descriptors of a {size}-entry queue");
            if (result == PopResult.Empty) return;
            if (result == PopResult.Fault)
            {
                if (string.IsNullOrEmpty(fault)) throw new FuzzFinding("a fault without a reason");
                return;
            }
            Check(chain ?? throw new FuzzFinding("Chain without a chain"), size);
            if (!queue.TryAddUsed(_memory, chain.Head, Math.Min(chain.WritableLength, 64), out _, out string? usedFault))
            {
                if (string.IsNullOrEmpty(usedFault)) throw new FuzzFinding("TryAddUsed failed without a reason");
                return;
            }
        }
    }

    private void Check(DescriptorChain chain, ushort size)
    {
        if (chain.Head >= size) throw new FuzzFinding($"head {chain.Head} of a {size}-entry queue");
        if (chain.Readable.Count + chain.Writable.Count > size)
            throw new FuzzFinding($"a chain of {chain.Readable.Count + chain.Writable.Count} buffers in a {size}-entry queue");
        ulong readable = 0, writable = 0;
        foreach (GuestBuffer b in chain.Readable) readable += Inside(b);
        foreach (GuestBuffer b in chain.Writable) writable += Inside(b);
        if (readable != chain.ReadableLength || writable != chain.WritableLength)
            throw new FuzzFinding($"lengths {chain.ReadableLength}/{chain.WritableLength}, buffers add up to {readable}/{writable}");
        if (readable + writable > uint.MaxValue) throw new FuzzFinding($"a chain of {readable + writable} bytes");
        int want = (int)Math.Min(readable, (ulong)_scratch.Length);
        int read = chain.Read(_memory, 0, _scratch.AsSpan(0, want));
        if (read != want) throw new FuzzFinding($"Read gave {read} of {want} readable bytes");
        int put = (int)Math.Min(writable, (ulong)_scratch.Length);
        int written = chain.Write(_memory, 0, _scratch.AsSpan(0, put));
        if (written != put) throw new FuzzFinding($"Write put {written} of {put} writable bytes");
    }

    private ulong Inside(GuestBuffer b)
    {
        if (b.Length == 0) throw new FuzzFinding("an empty buffer in a chain");
        if (!_memory.TryTranslate(b.Address, b.Length, out _))
            throw new FuzzFinding($"buffer [0x{b.Address:x}, +{b.Length}) is not wholly in guest memory");
        return b.Length;
    }

    public void Dispose() => _ram.Dispose();

    /// <summary>Two regions of one mapping at different guest addresses, with a hole between them.</summary>
    private sealed class HoleyMemory(GuestRam ram) : IGuestMemory
    {
        public bool TryTranslate(ulong address, ulong length, out nint host)
        {
            host = 0;
            ulong offset;
            if (address < Half) offset = address;
            else if (address >= SecondBase && address - SecondBase < Half) offset = Half + (address - SecondBase);
            else return false;
            ulong regionEnd = offset < Half ? Half : 2 * Half;
            if (length > regionEnd - offset) return false;
            return ram.TryTranslate(offset, length, out host);
        }
    }
}

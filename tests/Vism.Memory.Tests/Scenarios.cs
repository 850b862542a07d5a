using Vism.Abstractions;
using Vism.Native;

namespace Vism.Memory.Tests;

/// <summary>Behaviours every memory backend owes its users, run against each plugin with its own
/// region length.</summary>
internal static class Scenarios
{
    public static IMemoryBlock Allocate(IMemoryBackend backend, ulong length, ulong token)
    {
        IMemoryBlock? block = backend.TryAllocate(length, token, out Refusal refusal);
        Assert.True(block is not null, refusal.Detail);
        Assert.Equal(default, refusal);
        return block;
    }

    /// <summary>A peer maps the block through its own copy of the descriptor (what SCM_RIGHTS
    /// hands a VMM); both mappings see each other's writes, also when made at once from two threads.</summary>
    public static void PeerMappingSeesWritesBothWays(IMemoryBackend backend, ulong length)
    {
        using IMemoryBlock block = Allocate(backend, length, 7);
        using Mapping mine = Blocks.Map(block);
        using var peerFd = Fd.Dup(block.Handle);
        using Mapping peer = Blocks.Map(block, peerFd);

        Blocks.Stamp(mine, 0x42);
        Assert.True(Blocks.HasStamp(peer, 0x42));
        int half = (int)(length / 2);
        Parallel.For(0, 2, side => (side == 0 ? mine : peer).Span((ulong)(side * half), half).Fill((byte)(0xA0 + side)));
        Assert.True(peer.Span(0, half).IndexOfAnyExcept((byte)0xA0) < 0);
        Assert.True(mine.Span((ulong)half, half).IndexOfAnyExcept((byte)0xA1) < 0);
    }

    /// <summary>With room for one region only, a region written, released and allocated again reads as zeros.</summary>
    public static void ReleasedThenReallocatedReadsZeros(IMemoryBackend backend, ulong length)
    {
        Assert.Equal(length, backend.Usage.Capacity);
        IMemoryBlock first = Allocate(backend, length, 1);
        using (Mapping m = Blocks.Map(first)) Blocks.Stamp(m, 0x5A);
        first.Release();
        first.Dispose();

        using IMemoryBlock second = Allocate(backend, length, 2);
        using Mapping again = Blocks.Map(second);
        Assert.True(Blocks.IsZero(again));
    }

    /// <summary>Regions fill the capacity; the next is refused with a reason and counted; after a
    /// release the backend serves again; usage and high-water mark follow.</summary>
    public static void FillCapacityThenServeAfterRelease(IMemoryBackend backend, Counters counters, ulong length, int regions)
    {
        ulong capacity = (ulong)regions * length;
        Assert.Equal(capacity, backend.Usage.Capacity);
        var blocks = Enumerable.Range(1, regions).Select(t => Allocate(backend, length, (ulong)t)).ToList();

        Assert.Null(backend.TryAllocate(length, 99, out Refusal refusal));
        Assert.Contains("capacity", refusal.Detail);
        Assert.Equal(IMemoryBackend.AllocNoMemory, refusal.Counter);
        Assert.Equal(1, counters.Get("memory.alloc-failed.capacity"));
        Assert.Equal(new MemoryUsage(capacity, capacity, capacity), backend.Usage);

        blocks[1].Release();
        blocks[1].Dispose();
        Assert.Equal(capacity - length, backend.Usage.Used);
        blocks[1] = Allocate(backend, length, 100);
        foreach (IMemoryBlock b in blocks) { b.Release(); b.Dispose(); }
        Assert.Equal(new MemoryUsage(capacity, 0, capacity), backend.Usage);
    }
}

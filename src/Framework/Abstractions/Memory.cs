using Microsoft.Win32.SafeHandles;

namespace Vism.Abstractions;

/// <summary>Capacity accounting of a memory backend, in bytes.</summary>
/// <param name="Capacity">Bytes the backend may hand out in total.</param>
/// <param name="Used">Bytes held by live regions now.</param>
/// <param name="HighWater">The most bytes ever held at once.</param>
public readonly record struct MemoryUsage(ulong Capacity, ulong Used, ulong HighWater)
{
    /// <summary>Bytes still available.</summary>
    public ulong Free => Capacity > Used ? Capacity - Used : 0;
}

/// <summary>
/// Backing for one region: a file descriptor with an offset and length. Every transport maps a
/// region by handing these three to the other side, so backing is never a pointer.
/// </summary>
public interface IMemoryBlock : IDisposable
{
    /// <summary>The file descriptor (memfd, hugetlbfs or regular file). Owned by the block.</summary>
    SafeFileHandle Handle { get; }

    /// <summary>Offset of the region's first byte in the file (page aligned).</summary>
    ulong Offset { get; }

    /// <summary>Length in bytes (a multiple of the backend's page size).</summary>
    ulong Length { get; }

    /// <summary>Returns the memory to the system (hole punch, truncate or unlink) because the region is
    /// freed. After this the block only needs disposing. Idempotent.</summary>
    void Release();

    /// <summary>Checks that the backing still has the size this block was given. The core calls it
    /// before every map; a mismatch refuses the map (and is logged), so that a peer that resized
    /// backing which cannot be sealed (a named or unnamed file: a peer with WRITE holds a writable
    /// descriptor of it) never goes unnoticed. A backend whose files cannot change size (sealed
    /// memfds) may keep the default, which reports nothing.</summary>
    /// <returns>Null when the size is as allocated, otherwise what is wrong.</returns>
    string? CheckSize() => null;
}

/// <summary>A region a persistent backend found again at start-up.</summary>
/// <param name="Token">The region's token.</param>
/// <param name="Block">Its backing, contents intact.</param>
public readonly record struct RecoveredBlock(ulong Token, IMemoryBlock Block);

/// <summary>
/// A memory plugin: where regions live. One instance per device, created through DI with its
/// options type. All members are called on the device's loop, except <see cref="TryAllocate(ulong, ulong, out Refusal)"/>
/// when <see cref="AllocatesOffLoop"/> is true.
/// </summary>
public interface IMemoryBackend : IDisposable
{
    /// <summary>Allocation granularity and alignment (4 KiB, 2 MiB, 1 GiB).</summary>
    ulong PageSize { get; }

    /// <summary>
    /// Whether the core may call <see cref="TryAllocate(ulong, ulong, out Refusal)"/> on a thread-pool thread instead of the
    /// device's loop. Claiming pages can take milliseconds (tmpfs zeroes every 4 KiB page of a
    /// large region; a persistent region is fsynced), and a loop serves many devices, so a backend
    /// whose claim can be slow should say true: the ALLOC then waits off the loop and the other
    /// devices of the loop are not held up. A backend that says true must let
    /// <see cref="TryAllocate(ulong, ulong, out Refusal)"/> run concurrently with its other members and with
    /// <see cref="IMemoryBlock.Release"/> and <see cref="IDisposable.Dispose"/> of blocks it
    /// handed out (one device issues one ALLOC at a time, but an ALLOC abandoned by a device reset
    /// may still be running when the next one starts). Default false: everything on the loop.
    /// </summary>
    bool AllocatesOffLoop => false;

    /// <summary>Whether regions outlive the host (<see cref="Recover"/> finds them again). The core
    /// then records each region's owner and permission table in the host's state directory, and a
    /// region is freed only when its owner detaches it as the last reference: not by a non-owner's
    /// DETACH, not by a reset or a VMM that dies (docs/permissions in the README, "Persistence").
    /// Default false.</summary>
    bool PersistsRegions => false;

    /// <summary>Current accounting.</summary>
    MemoryUsage Usage { get; }

    /// <summary>Claims <paramref name="length"/> bytes (a multiple of <see cref="PageSize"/>) that
    /// read as zeros, with the pages really claimed (fallocate, or a hugetlb reservation), so
    /// exhaustion shows here and never as a SIGBUS later.</summary>
    /// <param name="length">Bytes to claim.</param>
    /// <param name="token">The token of the region being created (a persistent backend records it).</param>
    /// <param name="refusal">Why not (no space, no huge pages), when it returns null: the device
    /// acks the ALLOC with ERR, counts <c>err.</c> + <see cref="Refusal.Counter"/> and logs
    /// <see cref="Refusal.Detail"/>. <see cref="AllocNoMemory"/> is the counter of a backend with
    /// nothing more specific to say.</param>
    /// <returns>The block, or null when memory is exhausted.</returns>
    /// <remarks>Default: calls the obsolete <see cref="TryAllocate(ulong, ulong, out string?)"/> and
    /// reports its reason under <see cref="AllocNoMemory"/>, so a backend written against contract
    /// revision 1.0 keeps working. Implement this one.</remarks>
    IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal)
    {
#pragma warning disable CS0618 // the default forwards to the member it replaces
        IMemoryBlock? block = TryAllocate(length, token, out string? failure);
#pragma warning restore CS0618
        refusal = block is null ? new Refusal(AllocNoMemory, failure ?? "the memory backend gave no reason") : default;
        return block;
    }

    /// <summary>The counter of an ALLOC a memory backend refused without a more specific name.</summary>
    const string AllocNoMemory = "alloc.no-memory";

    /// <summary>Contract 1.0: claims <paramref name="length"/> bytes, reporting a failure as a sentence.</summary>
    /// <param name="length">Bytes to claim.</param>
    /// <param name="token">The token of the region being created.</param>
    /// <param name="failure">Why it failed, when it returns null.</param>
    /// <returns>The block, or null when memory is exhausted.</returns>
    /// <remarks>The host calls <see cref="TryAllocate(ulong, ulong, out Refusal)"/>; this is only
    /// what that member's default forwards to. Default: throws <see cref="NotSupportedException"/>
    /// (a backend must implement one of the two).</remarks>
    [Obsolete("Implement TryAllocate(ulong, ulong, out Refusal): a refusal names its counter as well as its reason.")]
    IMemoryBlock? TryAllocate(ulong length, ulong token, out string? failure) =>
        throw new NotSupportedException($"{GetType().Name} implements neither TryAllocate(ulong, ulong, out Refusal) nor TryAllocate(ulong, ulong, out string?)");

    /// <summary>Regions persisted by an earlier run (empty unless the backend persists regions).
    /// Called once, at start-up, before any allocation. Default: none (a backend that does not
    /// persist regions).</summary>
    /// <returns>The recovered blocks; the caller owns them.</returns>
    IReadOnlyList<RecoveredBlock> Recover() => [];
}

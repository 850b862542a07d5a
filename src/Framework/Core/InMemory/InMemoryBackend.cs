using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Core.InMemory;

/// <summary>
/// A memory backend for tests and examples: one memfd per region, claimed with fallocate, with a
/// byte capacity. <see cref="Recoverable"/> lets a test hand blocks to <see cref="Recover"/>.
/// </summary>
/// <param name="capacity">Bytes it may hand out in total.</param>
/// <param name="pageSize">Allocation granularity (a multiple of 4 KiB).</param>
public sealed class InMemoryBackend(ulong capacity, ulong pageSize = TransportRules.PageSize) : IMemoryBackend
{
    private ulong _used;
    private ulong _highWater;

    /// <inheritdoc />
    public ulong PageSize { get; } = pageSize;

    /// <inheritdoc />
    public MemoryUsage Usage => new(capacity, Volatile.Read(ref _used), Volatile.Read(ref _highWater));

    /// <summary>Blocks the next <see cref="Recover"/> returns (then forgets).</summary>
    public List<RecoveredBlock> Recoverable { get; } = [];

    /// <summary>Regions allocated so far.</summary>
    public int Allocations { get; private set; }

    /// <inheritdoc />
    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal)
    {
        refusal = default;
        if (length == 0 || length % PageSize != 0)
            return Refuse($"length {length} is not a positive multiple of {PageSize}", out refusal);
        ulong used = Volatile.Read(ref _used);
        if (length > capacity - used)
            return Refuse($"capacity exhausted: {length} bytes wanted, {capacity - used} of {capacity} free", out refusal);
        SafeFileHandle fd = MemFd.Create($"vism-region-{token:x16}", length);
        // Sealed like the memory plugins' memfds: nobody holding a descriptor can resize it.
        string? problem = MemFd.TryAllocate(fd, 0, length) is { } errno
            ? $"fallocate: {errno}"
            : Seals.Ensure(fd, FileSeals.Grow | FileSeals.Shrink | FileSeals.Seal);
        if (problem is not null)
        {
            fd.Dispose();
            return Refuse(problem, out refusal);
        }
        ulong now = Interlocked.Add(ref _used, length);
        if (now > Volatile.Read(ref _highWater))
            Volatile.Write(ref _highWater, now);
        Allocations++;
        return new Block(this, fd, length);
    }

    private static IMemoryBlock? Refuse(string detail, out Refusal refusal)
    {
        refusal = new Refusal(IMemoryBackend.AllocNoMemory, detail);
        return null;
    }

    /// <summary>Creates a block outside the capacity, as if persisted by an earlier run, and queues
    /// it for <see cref="Recover"/>.</summary>
    /// <param name="token">The token it was persisted under.</param>
    /// <param name="contents">Its contents (padded with zeros to a page multiple).</param>
    /// <returns>The block.</returns>
    public IMemoryBlock AddRecoverable(ulong token, ReadOnlySpan<byte> contents)
    {
        ulong length = DeviceLayout.RoundUp(Math.Max(1UL, (ulong)contents.Length), PageSize);
        SafeFileHandle fd = MemFd.Create($"vism-recovered-{token:x16}", length);
        using (Mapping map = Mapping.Map(fd, 0, length))
            contents.CopyTo(map.Span(0, contents.Length));
        Interlocked.Add(ref _used, length);
        var block = new Block(this, fd, length);
        Recoverable.Add(new RecoveredBlock(token, block));
        return block;
    }

    /// <inheritdoc />
    public IReadOnlyList<RecoveredBlock> Recover()
    {
        RecoveredBlock[] blocks = [.. Recoverable];
        Recoverable.Clear();
        return blocks;
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }

    private sealed class Block(InMemoryBackend owner, SafeFileHandle handle, ulong length) : IMemoryBlock
    {
        private int _released;

        public SafeFileHandle Handle { get; } = handle;

        public ulong Offset => 0;

        public ulong Length { get; } = length;

        /// <summary>Whether <see cref="Release"/> ran.</summary>
        public bool Released => _released != 0;

        public void Release()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
                return;
            if (!Handle.IsClosed)
                MemFd.PunchHole(Handle, 0, Length);
            Interlocked.Add(ref owner._used, unchecked(0 - Length));
        }

        public void Dispose() => Handle.Dispose();
    }
}

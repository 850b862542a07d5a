using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Memory.Shared;

/// <summary>A region's file between creation and commit.</summary>
/// <param name="Handle">The open descriptor.</param>
/// <param name="TempPath">For a persistent region, the temporary name it has until it is fully
/// claimed; null for an unnamed file (memfd, O_TMPFILE, or already unlinked).</param>
/// <param name="FinalPath">For a persistent region, the name it gets once claimed.</param>
internal sealed record PendingFile(SafeFileHandle Handle, string? TempPath = null, string? FinalPath = null);

/// <summary>Where a backend's region files come from and how it explains running out.</summary>
internal interface IRegionFileSource
{
    /// <summary>Creates the empty file for one region.</summary>
    /// <param name="token">The region's token.</param>
    /// <param name="failure">Why it could not, when it returns null.</param>
    PendingFile? Create(ulong token, out string? failure);

    /// <summary>Explains a failed claim (no space, no huge pages) to the operator.</summary>
    /// <param name="errno">What the claim returned.</param>
    /// <param name="length">Bytes that were being claimed.</param>
    string DescribeClaimFailure(Errno errno, ulong length);
}

/// <summary>
/// The allocation path both memory plugins share: check the length, reserve capacity, create one
/// file per region, claim all of its pages (<see cref="PageClaim"/>), and for a persistent region give the
/// file its final name only once that has succeeded. Every failure gives the capacity back, closes
/// (and for a named file removes) what was created, and returns a reason; none throws.
/// </summary>
internal sealed class RegionAllocator(UsageMeter meter, ulong pageSize, IRegionFileSource source, PageClaim pages,
                                      IDeviceCounters counters, ILogger log) : IDisposable
{
    private volatile bool _disposed;

    public UsageMeter Meter => meter;

    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (length == 0 || length % pageSize != 0)
            return Refuse("bad-length", LogLevel.Debug, $"a region of {length} bytes is not a positive multiple of the page size {Sizes.Prose(pageSize)}", out refusal);
        if (!meter.TryReserve(length, out ulong total))
        {
            MemoryUsage u = meter.Usage;
            return Refuse("capacity", LogLevel.Debug, $"capacity exhausted: {Sizes.Prose(u.Used)} of {Sizes.Prose(u.Capacity)} in use, {Sizes.Prose(length)} requested", out refusal);
        }

        PendingFile? file;
        string? failure;
        try
        {
            file = source.Create(token, out failure);
        }
        catch (PosixException ex)
        {
            file = null;
            failure = ex.Message;
        }
        if (file is null)
        {
            meter.Return(length);
            return Refuse("create-failed", LogLevel.Warning, failure ?? "the region file could not be created", out refusal);
        }

        Errno? claim = pages.Claim(file.Handle, length);
        string? reason = claim is { } e ? source.DescribeClaimFailure(e, length) : Commit(file, length);
        // A memfd is sealed against resizing (and further seals): no peer, whatever descriptor it
        // holds, can grow it past the accounting or shrink it under the owner. A file cannot be
        // sealed; its size is checked at every map instead (RegionBlock.CheckSize).
        if (reason is null && Seals.CanSeal(file.Handle))
        {
            string? sealing = Seals.Ensure(file.Handle, FileSeals.Grow | FileSeals.Shrink | FileSeals.Seal);
            if (sealing is not null) reason = $"sealing the region's memfd failed: {sealing}";
        }
        if (reason is not null)
        {
            Abandon(file);
            meter.Return(length);
            return Refuse(claim is null ? "commit-failed" : "claim-failed", LogLevel.Warning, reason, out refusal);
        }
        refusal = default;
        meter.Confirm(total);
        return new RegionBlock(file.Handle, length, token, file.FinalPath, pages, meter, counters, log);
    }

    /// <summary>Gives a persistent region its final name, durably: the data and size reach the
    /// file system before the name does, so a crash leaves either a temporary file (never
    /// recovered) or a complete region.</summary>
    private static string? Commit(PendingFile file, ulong length)
    {
        if (file.TempPath is null || file.FinalPath is null) return null;
        if (Posix.RecordLength(file.Handle, length) is { } x)
            return $"recording the region's length on {file.TempPath} ({Posix.LengthAttribute}) failed: {Posix.Describe(x)}";
        Errno e = Posix.Sync(file.Handle);
        if (e != 0) return $"fsync({file.TempPath}) failed: {Posix.Describe(e)}";
        e = Posix.RenameNoReplace(file.TempPath, file.FinalPath);
        if (e != 0) return $"rename to {file.FinalPath} failed: {Posix.Describe(e)}";
        e = Posix.SyncDirectory(Path.GetDirectoryName(file.FinalPath)!);
        if (e != 0)
        {
            Syscall.unlink(file.FinalPath);
            return $"fsync of {Path.GetDirectoryName(file.FinalPath)} failed: {Posix.Describe(e)}";
        }
        return null;
    }

    private static void Abandon(PendingFile file)
    {
        if (file.TempPath is not null) Syscall.unlink(file.TempPath);
        file.Handle.Dispose();
    }

    /// <summary>Counts a refusal as <c>memory.alloc-failed.</c><paramref name="counter"/> and logs
    /// it, rate limited (<see cref="RateLimitedLog"/>); the device counts and acks it as
    /// <see cref="IMemoryBackend.AllocNoMemory"/>. Refusals a driver causes (length, capacity) are
    /// logged at Debug, since the core logs every ERR ack with this reason; running out of the
    /// machine's memory or space is a Warning for the operator.</summary>
    private IMemoryBlock? Refuse(string counter, LogLevel level, string reason, out Refusal refusal)
    {
        RateLimitedLog.Count(counters, log, level, "memory.alloc-failed." + counter, "Allocation refused: {Reason}", reason);
        refusal = new Refusal(IMemoryBackend.AllocNoMemory, reason);
        return null;
    }

    public void Dispose() => _disposed = true;
}

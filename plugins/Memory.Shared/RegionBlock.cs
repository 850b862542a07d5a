using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Memory.Shared;

/// <summary>
/// The backing of one region: a file of its own (memfd, unnamed O_TMPFILE file, or a named file
/// when regions persist), mapped from offset 0. The block is self-contained: it keeps working,
/// and gives its bytes back to the meter, after its backend is disposed (a region allocated by
/// one device can outlive that device while a peer still references it).
/// Release and Dispose may run on any thread, each at most once.
/// </summary>
internal sealed class RegionBlock : IMemoryBlock
{
    private readonly UsageMeter _meter;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private readonly string? _path;
    private readonly PageClaim _pages;
    private int _released;
    private int _accounted = 1;

    /// <param name="handle">The region's file (owned from now on).</param>
    /// <param name="length">Its length, already claimed.</param>
    /// <param name="token">The region's token (for logs).</param>
    /// <param name="path">The file's name when it persists, else null (an unnamed file).</param>
    /// <param name="pages">How the pages were claimed, and so how they are given back.</param>
    /// <param name="meter">The accounting the length goes back to.</param>
    /// <param name="counters">The device's counters (release failures).</param>
    /// <param name="log">Logger.</param>
    public RegionBlock(SafeFileHandle handle, ulong length, ulong token, string? path, PageClaim pages,
                       UsageMeter meter, IDeviceCounters counters, ILogger log)
    {
        Handle = handle;
        Length = length;
        Token = token;
        _path = path;
        _pages = pages;
        _meter = meter;
        _counters = counters;
        _log = log;
    }

    public SafeFileHandle Handle { get; }

    public ulong Offset => 0;

    public ulong Length { get; }

    public ulong Token { get; }

    /// <summary>The region is freed: forget its name (so it is never recovered), then give its pages
    /// back (<see cref="PageClaim.Release"/>), which returns them at once even while a peer still
    /// maps the file, and makes whoever reads it next see zeros.</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        if (_path is not null && Syscall.unlink(_path) != 0)
        {
            Errno e = Stdlib.GetLastError();
            if (e != Errno.ENOENT) Fail($"unlink({_path})", e);
        }
        bool added = false;
        try
        {
            Handle.DangerousAddRef(ref added);
            _pages.Release(Handle, Length);
        }
        catch (ObjectDisposedException)
        {
            // Already disposed: the descriptor is closed and, the name being gone, the pages go
            // back when the last peer closes its copy.
        }
        catch (PosixException ex)
        {
            Fail(ex.Operation, ex.Errno);
        }
        finally
        {
            if (added) Handle.DangerousRelease();
        }
        ReturnAccounting();
    }

    /// <summary>The file must still be exactly <see cref="Length"/> bytes. A sealed memfd always is;
    /// a file is not when a peer with a writable descriptor resized it: a grown file is cut back to
    /// its length (so the space it took beyond the accounting is returned), and either way the map
    /// is refused.</summary>
    public string? CheckSize()
    {
        bool added = false;
        try
        {
            Handle.DangerousAddRef(ref added);
            if (Syscall.fstat(Fd.Raw(Handle), out Stat st) != 0)
                return $"fstat failed: {Posix.Describe(Stdlib.GetLastError())}";
            if ((ulong)st.st_size == Length)
                return null;
            string what = $"region {Token:x16}'s file is {st.st_size} bytes, {Length} were allocated (resized by a peer)";
            if ((ulong)st.st_size > Length && Posix.Truncate(Handle, Length) is null)
                what += $"; cut back to {Length} bytes";
            RateLimitedLog.Count(_counters, _log, LogLevel.Error, "memory.size-mismatch", "{Problem}", what);
            return what;
        }
        finally
        {
            if (added) Handle.DangerousRelease();
        }
    }

    /// <summary>Closes the descriptor. A persisted region keeps its file and contents.</summary>
    public void Dispose()
    {
        Handle.Dispose();
        ReturnAccounting();
    }

    private void ReturnAccounting()
    {
        if (Interlocked.Exchange(ref _accounted, 0) == 1)
            _meter.Return(Length);
    }

    private void Fail(string operation, Errno errno)
    {
        _counters.Increment("memory.release-failed");
        _log.LogError("Releasing region {Token:x16} ({Length}): {Operation} failed: {Error}",
            Token, Sizes.Prose(Length), operation, Posix.Describe(errno));
    }
}

using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Native;

namespace Vism.Memory.Shared;

/// <summary>
/// How a backend makes sure a new region's pages exist before the ALLOC is acknowledged (so that
/// running out is a refused ALLOC, never a SIGBUS when someone touches the region later), and how
/// it gives them back when the region is freed (so that the pages return to the system at once,
/// even while a peer still maps the file, and whoever reads the range next reads zeros).
/// </summary>
internal abstract class PageClaim
{
    /// <summary>fallocate at ALLOC, a hole punch at release: the file system allocates every page
    /// up front. What tmpfs and disk file systems offer.</summary>
    public static PageClaim Fallocate { get; } = new FallocateClaim();

    /// <summary>What <see cref="Claim"/> does, for messages: "fallocate of 2 MiB failed".</summary>
    public abstract string Operation { get; }

    /// <summary>Claims [0, <paramref name="length"/>) of an empty region file and gives the file that size.</summary>
    /// <param name="file">The region's file, just created.</param>
    /// <param name="length">The region's length, a multiple of the backend's page size.</param>
    /// <returns>null on success, otherwise the errno (the caller closes the file, which undoes a partial claim).</returns>
    public abstract Errno? Claim(SafeFileHandle file, ulong length);

    /// <summary>Returns the pages of [0, <paramref name="length"/>), and anything the claim holds
    /// for them, to the system; the file keeps its size and reads as zeros afterwards.</summary>
    /// <param name="file">The region's file (kept open by the caller for the duration of the call).</param>
    /// <param name="length">The region's length.</param>
    /// <exception cref="PosixException">The kernel refused.</exception>
    public abstract void Release(SafeFileHandle file, ulong length);

    private sealed class FallocateClaim : PageClaim
    {
        public override string Operation => "fallocate of";

        public override Errno? Claim(SafeFileHandle file, ulong length) => Posix.Claim(file, length);

        public override void Release(SafeFileHandle file, ulong length) => MemFd.PunchHole(file, 0, length);
    }
}

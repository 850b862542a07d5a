using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;

namespace Vism.PluginKit;

/// <summary>
/// A ready-made <see cref="IMemoryBlock"/>: a region of its own memfd (or any file, from offset 0)
/// whose pages are claimed when it is made and given back by a hole punch on <see cref="Release"/>.
/// <see cref="Release"/> and <see cref="Dispose"/> may run on any thread, each effectively once;
/// <paramref name="onReleased"/> is called once, when the pages go back (to return them to the
/// backend's accounting).
/// </summary>
/// <param name="handle">The file (owned from now on).</param>
/// <param name="length">The region's length, already claimed.</param>
/// <param name="onReleased">Called once with <paramref name="length"/> when the block is released
/// (by <see cref="Release"/> or, if never released, by <see cref="Dispose"/>).</param>
public sealed class MemFdBlock(SafeFileHandle handle, ulong length, Action<ulong>? onReleased = null) : IMemoryBlock
{
    private int _released;

    /// <summary>Creates a memfd of <paramref name="length"/> bytes and claims its pages, so that an
    /// exhausted system is reported here and never as SIGBUS later.</summary>
    /// <param name="name">The memfd's name (debugging only).</param>
    /// <param name="length">Bytes (a multiple of <paramref name="hugePageSize"/> when it is not 0).</param>
    /// <param name="failure">Why it failed, when it returns null.</param>
    /// <param name="hugePageSize">0 for normal pages, or 2 MiB / 1 GiB for huge pages.</param>
    /// <param name="onReleased">See the class.</param>
    /// <returns>The block, or null when the pages cannot be claimed.</returns>
    /// <exception cref="NativeCallException">When no memfd can be created at all.</exception>
    public static MemFdBlock? TryCreate(string name, ulong length, out string? failure, ulong hugePageSize = 0, Action<ulong>? onReleased = null)
    {
        SafeFileHandle fd = MemFd.Create(name, length, hugePageSize, allowSealing: hugePageSize == 0);
        if (!MemFd.TryClaim(fd, 0, length, out failure))
        {
            fd.Dispose();
            return null;
        }
        if (hugePageSize == 0)
            MemFd.AddSeals(fd, FileSeals.Shrink | FileSeals.Grow); // a peer's mapping can never lose its pages to a truncate
        return new MemFdBlock(fd, length, onReleased);
    }

    /// <inheritdoc />
    public SafeFileHandle Handle { get; } = handle;

    /// <inheritdoc />
    public ulong Offset => 0;

    /// <inheritdoc />
    public ulong Length { get; } = length;

    /// <summary>Gives the pages back now (a hole punch: peers that still map the region read zeros).
    /// Idempotent.</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        try
        {
            if (!Handle.IsClosed)
                MemFd.PunchHole(Handle, 0, Length);
        }
        finally
        {
            onReleased?.Invoke(Length);
        }
    }

    /// <summary>Releases the block if that has not happened, then closes the descriptor.</summary>
    public void Dispose()
    {
        Release();
        Handle.Dispose();
    }
}

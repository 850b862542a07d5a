using System.Diagnostics.CodeAnalysis;

namespace Vism.Abstractions;

/// <summary>One guest buffer of a descriptor chain: a guest-physical range.</summary>
/// <param name="Address">Guest-physical address.</param>
/// <param name="Length">Length in bytes.</param>
public readonly record struct GuestBuffer(ulong Address, uint Length);

/// <summary>
/// A descriptor chain popped from a virtqueue. The walker has already followed every descriptor
/// (including one level of indirect table), enforced the chain limits and checked each buffer
/// against guest memory. Driver-readable buffers come first, then device-writable ones.
/// </summary>
public sealed class DescriptorChain
{
    /// <summary>Creates a chain. Used by virtqueue engines, not by plugins.</summary>
    /// <param name="head">Index of the head descriptor (the id returned in the used ring).</param>
    /// <param name="readable">Driver-readable buffers in order.</param>
    /// <param name="writable">Device-writable buffers in order.</param>
    public DescriptorChain(ushort head, GuestBuffer[] readable, GuestBuffer[] writable)
    {
        Head = head;
        Readable = readable;
        Writable = writable;
        foreach (GuestBuffer b in readable) ReadableLength += b.Length;
        foreach (GuestBuffer b in writable) WritableLength += b.Length;
    }

    /// <summary>Index of the head descriptor.</summary>
    public ushort Head { get; }

    /// <summary>Driver-readable buffers in chain order.</summary>
    public IReadOnlyList<GuestBuffer> Readable { get; }

    /// <summary>Device-writable buffers in chain order.</summary>
    public IReadOnlyList<GuestBuffer> Writable { get; }

    /// <summary>Total driver-readable bytes (at most 2^32 - 1: longer chains are rejected by the walker).</summary>
    public uint ReadableLength { get; }

    /// <summary>Total device-writable bytes.</summary>
    public uint WritableLength { get; }

    /// <summary>Gathers driver-readable bytes starting at <paramref name="offset"/> into <paramref name="destination"/>.</summary>
    /// <param name="memory">Guest memory of the device.</param>
    /// <param name="offset">Offset into the readable part.</param>
    /// <param name="destination">Receives up to its length in bytes.</param>
    /// <returns>Bytes copied, or -1 when a buffer is no longer mapped.</returns>
    public int Read(IGuestMemory memory, uint offset, Span<byte> destination) =>
        Copy(memory, Readable, offset, destination, default, write: false);

    /// <summary>Scatters <paramref name="source"/> into the device-writable part starting at <paramref name="offset"/>.</summary>
    /// <param name="memory">Guest memory of the device.</param>
    /// <param name="offset">Offset into the writable part.</param>
    /// <param name="source">The bytes to write.</param>
    /// <returns>Bytes written (less than requested when the writable part is too short), or -1 when a buffer is no longer mapped.</returns>
    public int Write(IGuestMemory memory, uint offset, ReadOnlySpan<byte> source) =>
        Copy(memory, Writable, offset, default, source, write: true);

    private static int Copy(IGuestMemory memory, IReadOnlyList<GuestBuffer> buffers, uint offset,
        Span<byte> destination, ReadOnlySpan<byte> source, bool write)
    {
        int want = write ? source.Length : destination.Length;
        int done = 0;
        ulong skip = offset;
        for (int i = 0; i < buffers.Count && done < want; i++)
        {
            GuestBuffer b = buffers[i];
            if (skip >= b.Length)
            {
                skip -= b.Length;
                continue;
            }
            ulong start = b.Address + skip;
            int n = (int)Math.Min((ulong)(want - done), b.Length - skip);
            skip = 0;
            bool ok = write
                ? memory.TryWrite(start, source.Slice(done, n))
                : memory.TryRead(start, destination.Slice(done, n));
            if (!ok)
                return -1;
            done += n;
        }
        return done;
    }
}

/// <summary>
/// A device-side split virtqueue as a plugin uses it (the eventq for Events.Vq). The engine
/// behind it validates every ring access; a malformed ring marks the device
/// <see cref="DeviceStatus.DeviceNeedsReset"/> and makes <see cref="TryPop"/> return false.
/// Call only on the device's loop.
/// </summary>
public interface IVirtqueue
{
    /// <summary>Queue index.</summary>
    int Index { get; }

    /// <summary>Whether the driver has set the queue up and the device is running (DRIVER_OK).</summary>
    bool IsReady { get; }

    /// <summary>Pops the next available chain.</summary>
    /// <param name="chain">The chain, when one is available.</param>
    /// <returns>False when the ring is empty, not ready, or malformed.</returns>
    bool TryPop([NotNullWhen(true)] out DescriptorChain? chain);

    /// <summary>Returns <paramref name="chain"/> to the driver through the used ring with
    /// <paramref name="written"/> bytes written, and interrupts the driver unless it suppressed
    /// the notification (VRING_AVAIL_F_NO_INTERRUPT or, with EVENT_IDX, used_event).</summary>
    /// <param name="chain">A chain popped from this queue and not yet completed.</param>
    /// <param name="written">Bytes written into the chain's writable part.</param>
    void Complete(DescriptorChain chain, uint written);
}

using System.Runtime.InteropServices;
using Vism.Abstractions;
using Vism.Mmio;

namespace Vism.Transport.Mmio;

/// <summary>
/// The VMM as the MMIO transport sees it: what a VMM offers the device. The socket transport
/// implements it over the protocol in docs/mmio-protocol.md; a .NET VMM that embeds vism
/// implements it directly and drives an <see cref="MmioSession"/>. Called on the device's loop.
/// </summary>
public interface IMmioVmm
{
    /// <summary>Guest RAM as the device may access it.</summary>
    IGuestMemory Memory { get; }

    /// <summary>Per-region interrupt vectors the VMM delivers (VIRTIO_ISM_F_EVENT_IRQ).</summary>
    int VectorCount { get; }

    /// <summary>Asserts the device's standard virtio-mmio interrupt (InterruptStatus says why).</summary>
    void RaiseInterrupt();

    /// <summary>Signals the call eventfd the VMM wired for virtqueue <paramref name="queue"/>
    /// (SET_QUEUE_CALL_FD), which stands for a used-buffer notification of that queue.</summary>
    /// <param name="queue">The virtqueue index.</param>
    /// <returns>False when the VMM wired none for it: the caller then sets InterruptStatus bit 0 and
    /// raises the standard interrupt. A VMM that implements no per-queue calls keeps this default.</returns>
    bool SignalQueueCall(int queue) => false;

    /// <summary>Fires per-region vector <paramref name="vector"/> (0-based, below <see cref="VectorCount"/>).</summary>
    /// <param name="vector">The vector.</param>
    void RaiseVector(int vector);

    /// <summary>Maps <paramref name="mapping"/>.Length bytes of <paramref name="fd"/> from
    /// <paramref name="mapping"/>.FdOffset at <paramref name="mapping"/>.ShmOffset of the window,
    /// so the guest sees them at SHMBase + ShmOffset. The transport has validated the ranges and
    /// calls map and unmap in the order the VMM must apply them.</summary>
    /// <param name="mapping">What to map (window, offsets, length, read-write or read-only).</param>
    /// <param name="fd">The region's descriptor; the VMM duplicates it if it keeps it.</param>
    /// <returns>Null on success, otherwise why it failed.</returns>
    ValueTask<string?> MapAsync(WindowMapping mapping, SafeHandle fd);

    /// <summary>Removes a mapping made by <see cref="MapAsync"/>; the range reads as unbacked again.</summary>
    /// <param name="id">The window.</param>
    /// <param name="shmOffset">Offset of the mapping.</param>
    /// <param name="length">Its length.</param>
    /// <returns>Null on success, otherwise why it failed.</returns>
    ValueTask<string?> UnmapAsync(ShmId id, ulong shmOffset, ulong length);
}

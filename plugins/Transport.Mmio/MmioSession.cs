using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Mmio;

namespace Vism.Transport.Mmio;

/// <summary>
/// One VMM attached to one device through the MMIO register window: the in-process entry point a
/// .NET VMM calls (<see cref="Read"/>, <see cref="Write"/>, <see cref="Notify"/>), and the
/// <see cref="ITransportServices"/> the device uses for that VMM. The socket transport drives the
/// same class, so both paths share one register state machine and one mapping table.
/// Every member must be called on the device's loop (use <c>device.Loop.InvokeAsync</c> from a vCPU thread).
/// </summary>
public sealed class MmioSession : ITransportServices
{
    private readonly IVirtioDevice _device;
    private readonly IMmioVmm _vmm;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private readonly List<MapEntry> _mappings = [];
    private long _epoch;
    private bool _attached;

    /// <param name="device">The device.</param>
    /// <param name="vmm">The VMM's memory, interrupts and window mapper.</param>
    /// <param name="counters">The device's counters.</param>
    /// <param name="log">Where refusals are reported.</param>
    public MmioSession(IVirtioDevice device, IMmioVmm vmm, IDeviceCounters counters, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(vmm);
        _device = device;
        _vmm = vmm;
        _counters = counters;
        _log = log;
        Registers = new MmioRegisters(device, RaiseInterrupt, counters, log) { DeviceReset = OnDeviceReset };
    }

    /// <summary>The register window.</summary>
    public MmioRegisters Registers { get; }

    /// <summary>Whether the VMM is attached (between <see cref="Attach"/> and <see cref="Detach"/>).</summary>
    public bool IsAttached => _attached;

    /// <summary>Number of window mappings the VMM holds for this device (pending ones included).</summary>
    public int MappingCount => _mappings.Count;

    /// <summary>Attaches the VMM: the device is connected and may use this session's services.</summary>
    public void Attach()
    {
        CheckLoop();
        if (_attached) return;
        Registers.ClearTransportState();
        _attached = true;
        _device.Connect(this);
    }

    /// <summary>The VMM is gone: the device disconnects (releasing every attachment), pending map
    /// requests fail and the register state is cleared. Idempotent.</summary>
    public void Detach()
    {
        CheckLoop();
        if (!_attached) return;
        _attached = false;
        _epoch++;
        _device.Disconnect();
        _mappings.Clear(); // the VMM's mappings went with it
        Registers.ClearTransportState();
    }

    /// <summary>A guest read of the register window.</summary>
    /// <param name="offset">Byte offset in the window.</param>
    /// <param name="width">Access width in bytes.</param>
    /// <param name="value">What the guest reads (0 for an invalid access).</param>
    /// <returns>How the access was answered.</returns>
    public MmioAccessResult Read(uint offset, int width, out uint value)
    {
        CheckLoop();
        return Registers.Read(offset, width, out value);
    }

    /// <summary>A guest write to the register window.</summary>
    /// <param name="offset">Byte offset in the window.</param>
    /// <param name="width">Access width in bytes.</param>
    /// <param name="value">The value written.</param>
    /// <returns>How the access was answered.</returns>
    public MmioAccessResult Write(uint offset, int width, uint value)
    {
        CheckLoop();
        return Registers.Write(offset, width, value);
    }

    /// <summary>A guest write into the NOTIFY window (trapped by the VMM; the value is ignored).</summary>
    /// <param name="offset">Byte offset inside the NOTIFY window.</param>
    /// <param name="width">Access width in bytes.</param>
    /// <returns>How the write was answered.</returns>
    public MmioAccessResult Notify(ulong offset, int width)
    {
        CheckLoop();
        return Registers.WriteNotifyWindow(offset, width);
    }

    /// <summary>Where the VMM placed window <paramref name="id"/> in guest-physical space.</summary>
    /// <param name="id">The window.</param>
    /// <param name="guestPhysical">Its base (page aligned).</param>
    /// <returns>False for a window the device lacks, an unaligned base or a range that wraps.</returns>
    public bool SetShmBase(ShmId id, ulong guestPhysical)
    {
        CheckLoop();
        return guestPhysical % MmioProtocol.PageSize == 0 && Registers.SetShmBase(id, guestPhysical);
    }

    /// <inheritdoc />
    public IGuestMemory Memory => _vmm.Memory;

    /// <inheritdoc />
    public int VectorCount => _vmm.VectorCount;

    /// <inheritdoc />
    public bool CanMap => _attached;

    /// <inheritdoc />
    public void SignalQueue(int queueIndex)
    {
        // A queue the VMM gave a call eventfd is signalled there (the VMM then owns the used-buffer
        // bit of InterruptStatus, as with vhost-user); the others take the standard interrupt.
        if (_attached && !_vmm.SignalQueueCall(queueIndex)) Registers.SignalUsedBuffer();
    }

    /// <inheritdoc />
    public void SignalConfigChange()
    {
        if (_attached) Registers.SignalConfigChange();
    }

    /// <inheritdoc />
    public void SignalVector(int vector)
    {
        if (!_attached) return;
        if ((uint)vector >= (uint)_vmm.VectorCount)
        {
            _counters.Increment("mmio.irq.bad_vector");
            _log.LogWarning("{Device}: vector {Vector} is not one of the {Count} the VMM offers", _device.Description.Name, vector, _vmm.VectorCount);
            return;
        }
        _vmm.RaiseVector(vector);
    }

    /// <inheritdoc />
    public async ValueTask<string?> MapAsync(ShmId shmId, ulong windowOffset, IMemoryBlock block, ulong length, bool writable)
    {
        CheckLoop();
        ArgumentNullException.ThrowIfNull(block);
        string? failure = CheckMap(shmId, windowOffset, block, length);
        if (failure is not null) return MapFailed("map", failure);
        var entry = new MapEntry(shmId, windowOffset, length);
        _mappings.Add(entry);
        long epoch = _epoch;
        try
        {
            failure = await _vmm.MapAsync(new WindowMapping(shmId, writable, windowOffset, block.Offset, length), block.Handle);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or ObjectDisposedException)
        {
            failure = ex.Message;
        }
        if (epoch != _epoch)
            // Reset or detached meanwhile: a reset already queued the UNMAP behind this MAP; a
            // detached VMM holds nothing.
            return MapFailed("map", failure ?? "the device was reset, or its VMM left, while the VMM mapped the region");
        if (failure is not null)
        {
            _mappings.Remove(entry);
            return MapFailed("map", $"the VMM refused: {failure}");
        }
        return null;
    }

    /// <inheritdoc />
    public async ValueTask<string?> UnmapAsync(ShmId shmId, ulong windowOffset, ulong length)
    {
        CheckLoop();
        if (!_attached) return null; // nothing is mapped once the VMM is gone
        int i = _mappings.FindIndex(m => m.Id == shmId && m.Offset == windowOffset && m.Length == length);
        if (i < 0)
            return MapFailed("unmap", $"nothing is mapped at {shmId}+0x{windowOffset:x} with length 0x{length:x}");
        _mappings.RemoveAt(i);
        string? failure;
        try
        {
            failure = await _vmm.UnmapAsync(shmId, windowOffset, length);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or ObjectDisposedException)
        {
            failure = ex.Message;
        }
        return failure is null ? null : MapFailed("unmap", $"the VMM refused: {failure}");
    }

    private string? CheckMap(ShmId id, ulong offset, IMemoryBlock block, ulong length)
    {
        if (!_attached) return "no VMM is attached";
        ulong window = Registers.ShmLength(id);
        return TransportRules.CheckMap(id, window == MmioRegister.NoSharedMemory ? null : window, offset, length, block,
            _mappings.Where(m => m.Id == id).Select(m => new MappedRange(m.Offset, m.Length)));
    }

    private string MapFailed(string what, string reason)
    {
        _counters.Increment($"mmio.{what}.failed");
        _log.LogWarning("{Device}: {What} failed: {Reason}", _device.Description.Name, what, reason);
        return reason;
    }

    private void RaiseInterrupt()
    {
        if (_attached) _vmm.RaiseInterrupt();
    }

    private void OnDeviceReset()
    {
        // The driver reset the device. The device released its attachments (and may have unmapped
        // them already); whatever is still mapped goes now, queued behind any MAP in flight.
        _epoch++;
        if (!_attached || _mappings.Count == 0) return;
        MapEntry[] left = [.. _mappings];
        _mappings.Clear();
        foreach (MapEntry m in left)
            _ = UnmapLeftover(m);
    }

    private async Task UnmapLeftover(MapEntry m)
    {
        string? failure;
        try
        {
            failure = await _vmm.UnmapAsync(m.Id, m.Offset, m.Length);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or ObjectDisposedException)
        {
            failure = ex.Message;
        }
        if (failure is not null && _attached)
            MapFailed("unmap", $"dropping {m.Id}+0x{m.Offset:x} after a reset: {failure}");
    }

    private void CheckLoop()
    {
        if (!_device.Loop.IsOnLoop)
            throw new InvalidOperationException("MmioSession must be called on the device's loop (use device.Loop.InvokeAsync)");
    }

    private sealed record MapEntry(ShmId Id, ulong Offset, ulong Length);
}

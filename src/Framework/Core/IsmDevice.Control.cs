using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core.Registry;

namespace Vism.Core;

public sealed partial class IsmDevice
{
    /// <summary>Longest well-formed request: class, command and GRANT's 24 bytes.</summary>
    private const int MaxRequest = 2 + 24;

    /// <summary>Returned by a handler when the device was reset while it waited: nothing to complete.</summary>
    private const int Abandoned = int.MinValue;

    /// <summary>Returned by a handler for an ERR ack.</summary>
    private const int Error = -1;

    private readonly byte[] _request = new byte[MaxRequest];
    private readonly byte[] _reply = new byte[1 + 16];
    private bool _controlRunning;

    private void KickControl()
    {
        if (_controlRunning || !Running || !_queues[Virtio.ControlQueue].Started)
            return;
        _controlRunning = true;
        _ = RunControlAsync(_epoch);
    }

    /// <summary>Processes the controlq one request at a time: a request that maps memory completes
    /// only after the transport finished the mapping, and the next one is popped after that.</summary>
    private async Task RunControlAsync(int epoch)
    {
        try
        {
            DeviceQueue queue = _queues[Virtio.ControlQueue];
            while (epoch == _epoch && queue.TryPop(out DescriptorChain? chain))
            {
                // Notify writes the driver made before publishing this request are routed first.
                _services?.FlushNotifyWrites();
                await ProcessAsync(queue, chain, epoch);
            }
        }
        catch (Exception ex)
        {
            _log.LogCritical(ex, "device {Name} (devid {DevId}): control request processing failed", Description.Name, DevId);
            if (epoch == _epoch)
                Fail("internal", ex.Message);
        }
        finally
        {
            if (epoch == _epoch)
                _controlRunning = false;
        }
    }

    private async Task ProcessAsync(DeviceQueue queue, DescriptorChain chain, int epoch)
    {
        if (chain.WritableLength == 0)
        {
            Reject("ctrl.no-ack-space", $"request at descriptor {chain.Head} has no device-writable byte for the ack");
            queue.Complete(chain, 0);
            return;
        }
        int result = await ExecuteAsync(chain, epoch);
        if (result == Abandoned || epoch != _epoch)
            return;
        int length;
        if (result >= 0)
        {
            _reply[0] = IsmControl.AckOk;
            length = 1 + result;
        }
        else
        {
            _reply[0] = IsmControl.AckErr;
            length = 1;
        }
        int written = chain.Write(_services!.Memory, 0, _reply.AsSpan(0, length));
        if (written < 0)
        {
            Fail("ring.buffer-unmapped", $"the reply buffer of descriptor {chain.Head} is no longer in guest memory");
            return;
        }
        queue.Complete(chain, (uint)written);
    }

    /// <summary>Decodes and runs one request.</summary>
    /// <returns>The reply length (in <see cref="_reply"/> after the ack) for OK, <see cref="Error"/>
    /// for ERR, or <see cref="Abandoned"/>.</returns>
    private async ValueTask<int> ExecuteAsync(DescriptorChain chain, int epoch)
    {
        uint readable = chain.ReadableLength;
        if (readable < 2)
            return Err("ctrl.short-header", $"{readable} driver-readable bytes; class and command need 2");
        int take = (int)Math.Min(readable, (uint)MaxRequest);
        if (chain.Read(_services!.Memory, 0, _request.AsSpan(0, take)) != take)
        {
            Fail("ring.buffer-unmapped", $"the request buffer of descriptor {chain.Head} is no longer in guest memory");
            return Abandoned;
        }
        byte cls = _request[0];
        byte command = _request[1];
        (string name, int dataLength, int replyLength) = cls switch
        {
            IsmControl.ClassAlloc => ("alloc", 8, 16),
            IsmControl.ClassAttach => ("attach", 8, 8),
            IsmControl.ClassDetach => ("detach", 8, 0),
            IsmControl.ClassGrant => ("grant", 24, 0),
            IsmControl.ClassEventVector => ("event-vector", 16, 0),
            _ => ("", 0, 0),
        };
        if (name.Length == 0)
            return Err("ctrl.unknown-class", $"class {cls}");
        if (command != IsmControl.CommandDefault)
            return Err($"{name}.unknown-command", $"command {command}");
        uint data = readable - 2;
        if (data < dataLength)
            return Err($"{name}.short", $"{data} data bytes, {dataLength} expected");
        if (data > dataLength)
            return Err($"{name}.oversized", $"{data} data bytes, {dataLength} expected");
        if (chain.WritableLength < 1 + replyLength)
            return Err($"{name}.reply-space", $"{chain.WritableLength} device-writable bytes, {1 + replyLength} needed");

        ulong a = BinaryPrimitives.ReadUInt64LittleEndian(_request.AsSpan(2));
        int result = cls switch
        {
            IsmControl.ClassAlloc => await AllocAsync(a, epoch),
            IsmControl.ClassAttach => await AttachAsync(a, epoch),
            IsmControl.ClassDetach => await DetachAsync(a, epoch),
            IsmControl.ClassGrant => Grant(a, BinaryPrimitives.ReadUInt64LittleEndian(_request.AsSpan(10)), BinaryPrimitives.ReadUInt64LittleEndian(_request.AsSpan(18))),
            _ => EventVector(a, BinaryPrimitives.ReadUInt64LittleEndian(_request.AsSpan(10))),
        };
        if (result >= 0)
            Counters.Increment($"ctrl.{name}.ok");
        return result;
    }

    private int Err(string reason, string detail)
    {
        Reject(reason, detail);
        return Error;
    }

    private async ValueTask<int> AllocAsync(ulong size, int epoch)
    {
        ulong regionSize = Description.RegionSize;
        if (size == 0)
            return Err("alloc.zero-size", "a region of 0 bytes");
        if (size > regionSize)
            return Err("alloc.too-large", $"{size} bytes > region_size {regionSize}");
        ulong page = _memory.PageSize;
        if (page == 0 || page % DeviceLayout.PageSize != 0)
            return Err("alloc.backend-page-size", $"the memory backend's page size {page} is not a multiple of {DeviceLayout.PageSize}");
        ulong length = DeviceLayout.RoundUp(size, page);
        if (length > regionSize)
            return Err("alloc.page-too-large", $"{size} bytes round up to {length} with {page}-byte pages, more than region_size {regionSize}");
        // Refused before any memory is claimed; the slot itself is taken once the memory is there,
        // so an allocation abandoned while the backend works holds no slot.
        if (_slots.InUse >= Description.MaxRegions)
            return Err("alloc.no-slot", $"all {Description.MaxRegions} region slots are in use");

        ulong token = Host.NewToken();
        (IMemoryBlock? block, string? failure) = _memory.AllocatesOffLoop
            ? await AllocateOffLoopAsync(length, token)
            : Allocate(length, token);
        if (epoch != _epoch)
        {
            // A reset, a controlq restart or the device's removal came while the backend worked:
            // nobody will know this region, so its memory goes back now.
            if (block is not null)
                DiscardBlock(block);
            return Abandoned;
        }
        if (block is null)
            return Err("alloc.no-memory", failure ?? "the memory backend gave no reason");
        if (block.Length < length || block.Length > regionSize || block.Length % DeviceLayout.PageSize != 0 || block.Offset % DeviceLayout.PageSize != 0)
        {
            string what = $"the memory backend returned {block.Length} bytes at offset {block.Offset} for {length}";
            DiscardBlock(block, "alloc.bad-block-discarded");
            return Err("alloc.backend-bad-block", what);
        }
        int slot = _slots.Take();
        if (slot < 0)
        {
            DiscardBlock(block);
            return Err("alloc.no-slot", $"all {Description.MaxRegions} region slots are in use");
        }
        Region region = Host.CreateRegion(this, slot, token, block, size);
        var entry = new SlotEntry(region, writable: true);
        _regions.Add(slot, entry);
        RefreshMemoryUsage();
        Counters.Increment("regions.allocated");

        string? mapFailure = await MapAsync(slot, block, writable: true);
        if (epoch != _epoch)
            return Abandoned; // the reset released the region
        if (mapFailure is not null)
        {
            DropSlot(slot, entry);
            return Err("alloc.map-failed", mapFailure);
        }
        entry.Mapped = true;
        BinaryPrimitives.WriteUInt64LittleEndian(_reply.AsSpan(1), token);
        BinaryPrimitives.WriteUInt64LittleEndian(_reply.AsSpan(9), (ulong)slot * regionSize);
        return 16;
    }

    /// <summary>Calls the backend; an exception becomes a failure reason.</summary>
    private (IMemoryBlock? Block, string? Failure) Allocate(ulong length, ulong token)
    {
        try
        {
            IMemoryBlock? block = _memory.TryAllocate(length, token, out string? failure);
            return (block, failure);
        }
        catch (Exception ex)
        {
            return (null, $"the memory backend threw {ex.GetType().Name}: {ex.Message}");
        }
    }

    /// <summary>Runs <see cref="Allocate"/> on a thread-pool thread and resumes on the loop, so a
    /// slow claim holds up only this device's controlq, not the other devices of the loop.</summary>
    private Task<(IMemoryBlock? Block, string? Failure)> AllocateOffLoopAsync(ulong length, ulong token)
    {
        // Completed on the loop thread, so the awaiting continuation runs there.
        var done = new TaskCompletionSource<(IMemoryBlock?, string?)>();
        Counters.Increment("alloc.off-loop");
        ThreadPool.UnsafeQueueUserWorkItem(_ =>
        {
            (IMemoryBlock? Block, string? Failure) result = Allocate(length, token);
            try
            {
                Loop.Post(() => done.SetResult(result));
            }
            catch (Exception ex)
            {
                // The loop is gone (the host stopped while the backend worked): nobody will take
                // the block, and nothing may escape from a thread-pool thread.
                _log.LogWarning("device {Name}: an allocation finished after the device's loop stopped ({Error}); its memory is released",
                    Description.Name, ex.Message);
                if (result.Block is not null)
                    DiscardBlock(result.Block, onLoop: false);
            }
        }, null);
        return done.Task;
    }

    /// <summary>Returns the memory of a block no region was made of, and disposes it. Unlike
    /// <see cref="FreeBlock"/> this releases even while the host shuts down: a region nobody was
    /// told about must not persist.</summary>
    private void DiscardBlock(IMemoryBlock block, string counter = "alloc.abandoned", bool onLoop = true) =>
        ReleaseAndDispose(block, release: true, counter, refreshUsage: onLoop);

    private async ValueTask<int> AttachAsync(ulong token, int epoch)
    {
        int slot = _slots.Take();
        if (slot < 0)
            return Err("attach.no-slot", $"all {Description.MaxRegions} region slots are in use");
        string? refused = Host.TryAttach(this, slot, token, out Region? region, out bool writable);
        if (refused is not null)
        {
            _slots.Return(slot);
            return Err("attach." + refused, refused switch
            {
                "unknown-token" => "no region has this token",
                "already-attached" => "this device already references the region",
                "region-too-large" => $"the region is larger than this device's region_size {Description.RegionSize}",
                "denied" => "the region's permissions do not let this device attach",
                "no-access" => "the region's permissions give this device neither READ nor WRITE",
                "pair-taken" => "the region is already shared by two other devices (sharing = pair)",
                _ => refused,
            });
        }
        var entry = new SlotEntry(region!, writable);
        _regions.Add(slot, entry);
        Counters.Increment("regions.attached");

        string? mapFailure = await MapAsync(slot, region!.Block, writable);
        if (epoch != _epoch)
            return Abandoned;
        if (mapFailure is not null)
        {
            DropSlot(slot, entry);
            return Err("attach.map-failed", mapFailure);
        }
        entry.Mapped = true;
        BinaryPrimitives.WriteUInt64LittleEndian(_reply.AsSpan(1), (ulong)slot * Description.RegionSize);
        return 8;
    }

    private async ValueTask<int> DetachAsync(ulong offset, int epoch)
    {
        if (!TryFindSlot(offset, out int slot, out SlotEntry? entry))
            return Err("detach.not-assigned", $"no region at offset 0x{offset:x}");
        if (entry.Mapped)
        {
            string? failure;
            ITransportServices services = _services!;
            if (!services.CanMap)
            {
                failure = "the transport cannot change mappings now";
            }
            else
            {
                try
                {
                    failure = await services.UnmapAsync(ShmId.Regions, offset, entry.Region.Length);
                }
                catch (Exception ex)
                {
                    failure = $"{ex.GetType().Name}: {ex.Message}";
                }
            }
            if (epoch != _epoch)
                return Abandoned;
            if (failure is not null)
                return Err("detach.unmap-failed", failure);
        }
        DropSlot(slot, entry);
        if (_eventContext is not null)
            CallEvents(e => e.OnRegionDetached(offset), "OnRegionDetached");
        Counters.Increment("regions.detached");
        return 0;
    }

    private int Grant(ulong offset, ulong peer, ulong permissions)
    {
        if (!TryFindSlot(offset, out _, out SlotEntry? entry))
            return Err("grant.not-assigned", $"no region at offset 0x{offset:x}");
        if ((permissions & ~(ulong)IsmPermissions.All) != 0)
            return Err("grant.bad-permissions", $"permissions 0x{permissions:x} have undefined bits");
        string? refused = Host.TryGrant(entry.Region, this, peer, (IsmPermissions)permissions);
        if (refused is not null)
            return Err("grant." + refused, "this device lacks MANAGE on the region");
        _log.LogDebug("device {Name}: region at 0x{Offset:x}: permissions of {Peer} set to {Permissions}",
            Description.Name, offset, peer == 0 ? "the default entry" : $"devid {peer}", (IsmPermissions)permissions);
        return 0;
    }

    private int EventVector(ulong offset, ulong vector)
    {
        if (!Features.Has(DriverFeatures, Features.IsmEventIrq))
            return Err("event-vector.not-negotiated", "VIRTIO_ISM_F_EVENT_IRQ was not negotiated");
        if (!TryFindSlot(offset, out _, out _))
            return Err("event-vector.not-assigned", $"no region at offset 0x{offset:x}");
        if (_eventContext is null)
            return Err("event-vector.no-channel", "the event channel is not active");
        string? failure = null;
        bool bound = false;
        CallEvents(e => bound = e.TryBindVector(offset, vector, out failure), "TryBindVector");
        if (!bound)
            return Err("event-vector.rejected", failure ?? "the event channel refused the vector");
        return 0;
    }

    private bool TryFindSlot(ulong offset, out int slot, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out SlotEntry? entry)
    {
        slot = -1;
        entry = null;
        ulong regionSize = Description.RegionSize;
        if (offset % regionSize != 0 || offset / regionSize >= (ulong)Description.MaxRegions)
            return false;
        slot = (int)(offset / regionSize);
        return _regions.TryGetValue(slot, out entry);
    }

    private async ValueTask<string?> MapAsync(int slot, IMemoryBlock block, bool writable)
    {
        ITransportServices? services = _services;
        if (services is null || !services.CanMap)
            return "the transport cannot change mappings now";
        try
        {
            return await services.MapAsync(ShmId.Regions, (ulong)slot * Description.RegionSize, block, block.Length, writable);
        }
        catch (Exception ex)
        {
            return $"{ex.GetType().Name}: {ex.Message}";
        }
    }

    /// <summary>Forgets a slot and drops its reference (the region is freed when it was the last).</summary>
    private void DropSlot(int slot, SlotEntry entry)
    {
        _regions.Remove(slot);
        _slots.Return(slot);
        Host.Release(entry.Region, this, slot, detach: true);
    }
}

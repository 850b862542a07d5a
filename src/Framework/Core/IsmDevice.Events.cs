using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core.Registry;

namespace Vism.Core;

public sealed partial class IsmDevice
{
    /// <inheritdoc />
    public void NotifyWrite(ulong offset)
    {
        Counters.Increment("notify.writes");
        if (offset >= Description.NotifyWindowSize)
        {
            Reject("notify.out-of-range", $"notify write at 0x{offset:x}; the NOTIFY window is {Description.NotifyWindowSize} bytes");
            return;
        }
        ulong slot = offset / Description.NotifySize;
        if (slot >= (ulong)Description.MaxRegions || !_regions.TryGetValue((int)slot, out SlotEntry? entry))
        {
            Reject("notify.unassigned", $"notify write at 0x{offset:x}: slot {slot} holds no region");
            return;
        }
        if (!EventFeatureNegotiated)
        {
            Counters.Increment("notify.dropped.writer-no-events");
            return;
        }
        Region region = entry.Region;
        foreach (RegionRef peer in region.Refs)
        {
            if (ReferenceEquals(peer.Device, this))
                continue;
            IsmDevice target = peer.Device;
            int targetSlot = peer.Slot;
            // A peer on this loop gets the update now, in the turn that saw the write (its event
            // channel signals its driver before this returns); a peer on another loop gets one Post.
            if (ReferenceEquals(target.Loop, Loop))
                target.DeliverUpdate(region, targetSlot);
            else
                target.Loop.Post(() => target.DeliverUpdate(region, targetSlot));
            Counters.Increment("notify.routed");
        }
    }

    /// <summary>On this device's loop: a peer updated <paramref name="region"/>, which this device
    /// referenced at <paramref name="slot"/> when the update was routed.</summary>
    private void DeliverUpdate(Region region, int slot)
    {
        if (!_regions.TryGetValue(slot, out SlotEntry? entry) || !ReferenceEquals(entry.Region, region))
        {
            Counters.Increment("events.dropped.detached");
            return;
        }
        if (_eventContext is null || !Running)
        {
            Counters.Increment("events.dropped.no-events");
            return;
        }
        Counters.Increment("events.updates");
        RegionSlot at = RegionSlot.Of(slot, Description.RegionSize);
        CallEvents(e => e.OnRegionUpdated(at), "OnRegionUpdated");
    }

    private void ActivateEvents()
    {
        if (_events is null || (DriverFeatures & _events.Features) == 0)
            return;
        var context = new EventContext(this);
        _eventContext = context;
        if (!CallEvents(e => e.Activate(context), "Activate"))
            _eventContext = null;
    }

    private void DeactivateEvents()
    {
        EventContext? context = _eventContext;
        if (context is null)
            return;
        _eventContext = null;
        context.Active = false;
        CallEvents(e => e.Deactivate(), "Deactivate", force: true);
    }

    /// <summary>Calls the event plugin; an exception is logged and counted and marks the device
    /// DEVICE_NEEDS_RESET (the plugin's state is unknown), never leaving the loop.</summary>
    private bool CallEvents(Action<IEventChannel> call, string what, bool force = false)
    {
        if (_events is null || (_eventContext is null && !force))
            return false;
        try
        {
            call(_events);
            return true;
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "device {Name} (devid {DevId}): the event channel failed in {Call}", Description.Name, DevId, what);
            if (force)
                Counters.Increment("err.events.plugin-failed");
            else
                Fail("events.plugin-failed", $"{what} threw {ex.GetType().Name}");
            return false;
        }
    }

    /// <summary>What an active event channel sees of the device; inert after deactivation.</summary>
    private sealed class EventContext(IsmDevice device) : IEventContext
    {
        public volatile bool Active = true;

        public ulong NegotiatedFeatures => device.DriverFeatures;

        public IVirtqueue? GetQueue(int index) =>
            Active && index >= 1 && index < device._queues.Length ? device._queues[index] : null;

        public int VectorCount => Active ? device._services?.VectorCount ?? 0 : 0;

        public void SignalVector(int vector)
        {
            if (!Active || device._services is not { } services)
                return;
            if ((uint)vector >= (uint)services.VectorCount)
            {
                device.Counters.Increment("err.events.bad-vector");
                return;
            }
            services.SignalVector(vector);
        }

        public IDeviceCounters Counters => device.Counters;

        public ILogger Log => device._log;

        public IGuestMemory Memory => (Active ? device._services?.Memory : null) ?? NoMemory.Instance;
    }

    /// <summary>Guest memory of a context that is no longer active: nothing is mapped.</summary>
    private sealed class NoMemory : IGuestMemory
    {
        public static readonly NoMemory Instance = new();

        public bool TryTranslate(ulong address, ulong length, out nint host)
        {
            host = 0;
            return false;
        }
    }
}

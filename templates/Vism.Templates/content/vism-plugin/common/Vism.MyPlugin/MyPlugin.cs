using Vism.Abstractions;

// The host refuses a plugin built against another contract version.
[assembly: VismPlugin(VismContract.Version)]

namespace Vism.MyPlugin;

/// <summary>The plugin's entry point: the host creates it (parameterless constructor) and calls
/// <see cref="Register"/> once.</summary>
public sealed class MyPlugin : IVismPlugin
{
    /// <summary>The <c>kind</c> value that selects this plugin in a config.</summary>
    public const string Kind = "my-kind";

    /// <inheritdoc />
    public void Register(IVismPluginBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
#if (kind == "memory")
        builder.AddMemory<MyMemoryBackend, MyOptions>(Kind, "Regions in memfds claimed with fallocate (from the vism-plugin template)");
#elif (kind == "events")
        builder.AddEvents<MyEventChannel, MyOptions>(Kind, "One interrupt vector per region (from the vism-plugin template)");
#else
        builder.AddTransport<MyTransport, MyOptions>(Kind, "In-process transport skeleton (from the vism-plugin template)");
#endif
    }
}

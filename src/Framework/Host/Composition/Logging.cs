using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Vism.Host.Config;

namespace Vism.Host.Composition;

/// <summary>The host's console logging (standard error): one line per message in the chosen format.</summary>
internal static class Logging
{
    /// <summary>The .NET configuration variable for the console formatter (<c>simple</c>, <c>json</c>, <c>systemd</c>).</summary>
    public const string FormatterVariable = "Logging__Console__FormatterName";

    /// <summary>The format in force: the command line's, else <see cref="FormatterVariable"/>'s, else the config's.</summary>
    public static LogFormat Choose(LogFormat? commandLine, LogFormat configured) =>
        commandLine
        ?? Environment.GetEnvironmentVariable(FormatterVariable)?.Trim().ToLowerInvariant() switch
        {
            "simple" or "text" => LogFormat.Text,
            "json" => LogFormat.Json,
            "systemd" => LogFormat.Systemd,
            _ => configured,
        };

    public static ILoggerFactory Create(LogLevel level, LogFormat format = LogFormat.Text) => LoggerFactory.Create(b =>
    {
        b.SetMinimumLevel(level);
        switch (format)
        {
            case LogFormat.Json:
                b.AddJsonConsole(o =>
                {
                    o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
                    o.UseUtcTimestamp = true;
                    o.JsonWriterOptions = new JsonWriterOptions { Indented = false };
                });
                break;
            case LogFormat.Systemd:
                // journald adds its own timestamp; the <N> prefix carries the priority.
                b.AddSystemdConsole(o => o.TimestampFormat = null);
                break;
            default:
                b.AddSimpleConsole(o =>
                {
                    o.SingleLine = true;
                    o.TimestampFormat = "HH:mm:ss.fff ";
                    o.UseUtcTimestamp = false;
                    o.ColorBehavior = LoggerColorBehavior.Default;
                });
                break;
        }
        b.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
    });
}

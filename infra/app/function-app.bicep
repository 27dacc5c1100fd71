// The function app on the Flex Consumption plan (FC1), running as the user-assigned identity.
// Storage, Key Vault and Application Insights are all reached with that identity: no keys,
// no connection strings. Secrets reach the app only as Key Vault references.

@description('Name of the function app (also its host name).')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for every resource; the app also gets azd-service-name.')
param tags object

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Client id of the user-assigned identity the app runs as.')
param identityClientId string

@description('Name of the storage account (host state, tables, queues, deployment package).')
param storageAccountName string

@description('Blob container that holds the deployment package.')
param deploymentContainerName string

@description('Connection string of Application Insights. It names the resource and its ingestion endpoint; with local authentication off it is no credential (telemetry needs the identity\'s Entra ID token).')
param applicationInsightsConnectionString string

@description('Python version of the Flex Consumption runtime. 3.11 is supported there until October 2027; the README says how to move to 3.12 or 3.13.')
@allowed([
  '3.11'
])
param pythonVersion string

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('The app settings the code reads (names as in the README "Settings" table), besides the ones for storage, identity and monitoring set here.')
param serviceSettings object

// The storage service endpoints, built from the account name and the cloud's storage suffix
// (core.windows.net in Azure's public cloud). The app settings below are written by a `for` loop,
// whose source must be known when the deployment starts (Bicep BCP178): parameters, variables built
// from them, environment(), never what Azure returns for a resource (`storage.properties.*`) or a
// module's outputs. tests/test_infra.py checks every such position.
var blobServiceUri = 'https://${storageAccountName}.blob.${environment().suffixes.storage}/'
var queueServiceUri = 'https://${storageAccountName}.queue.${environment().suffixes.storage}/'
var tableServiceUri = 'https://${storageAccountName}.table.${environment().suffixes.storage}/'

// Identity-based host storage, the identity the SDKs sign in with, and Entra ID telemetry.
var platformSettings = {
  AzureWebJobsStorage__blobServiceUri: blobServiceUri
  AzureWebJobsStorage__queueServiceUri: queueServiceUri
  AzureWebJobsStorage__tableServiceUri: tableServiceUri
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    // Nothing from the Flex Consumption list of refused site properties: no ftpsState (Flex
    // Consumption has no FTP and refuses the property; basic-auth publishing is off below), no
    // linuxFxVersion, alwaysOn, ... (tests/test_infra.py holds the list).
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: [for setting in items(union(serviceSettings, platformSettings)): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobServiceUri}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No basic (user name and password) publishing: deployments sign in with Entra ID.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  location: location
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  location: location
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output uri string = 'https://${functionApp.properties.defaultHostName}'
